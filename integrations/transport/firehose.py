"""The Firehose transport (PutRecordBatch, PutRecord, DescribeDeliveryStream) behind `transport.base.Transport`.

Every failure comes out as one `TransportError` that says whether a retry can help and why (`Reason`).
"""

from __future__ import annotations

import functools
import re
from typing import Any, ClassVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from django.conf import settings

from ..endpoints import EndpointRefused, client_connections_checked, endpoint_url_error
from .base import Credentials, EntryFailure, Limits, Reason, StreamDescription, Timeouts, TransportError

LIMITS = Limits(batch_records=500, batch_bytes=4 * 1024 * 1024, record_bytes=1000 * 1024)

THROTTLED = "ServiceUnavailableException"  # the stream's rate limit: slow down, then retry

ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredTokenException",
        "MissingAuthenticationToken",
    }
)
PERMANENT_CODES: dict[str, Reason] = {
    **{code: Reason.ACCESS_DENIED for code in ACCESS_DENIED_CODES},
    "ResourceNotFoundException": Reason.STREAM_NOT_FOUND,
    "ResourceInUseException": Reason.STREAM_NOT_ACTIVE,
    "InvalidKMSResourceException": Reason.STREAM_NOT_ACTIVE,
    "InvalidSourceException": Reason.STREAM_NOT_ACTIVE,
}
PLAIN_WORDS: dict[str, str] = {
    "AccessDeniedException": "The credentials are not allowed to do this: check the IAM policy.",
    "AccessDenied": "The credentials are not allowed to do this: check the IAM policy.",
    "UnrecognizedClientException": "AWS does not recognise this Access Key ID.",
    "InvalidClientTokenId": "AWS does not recognise this Access Key ID.",
    "InvalidSignatureException": "The Secret Access Key does not match the Access Key ID.",
    "SignatureDoesNotMatch": "The Secret Access Key does not match the Access Key ID.",
    "ResourceNotFoundException": "The delivery stream does not exist in this region.",
    "ResourceInUseException": "The delivery stream is not active.",
    "ServiceUnavailableException": "Firehose is throttling: the stream's rate limit was exceeded.",
    "InternalFailure": "Firehose failed internally.",
}


_XML_CODE = re.compile(r"<Code>([^<]*)</Code>")
_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9.]{0,127}")


def delivery_timeouts() -> Timeouts:
    return Timeouts(settings.FIREHOSE_CONNECT_TIMEOUT_SECONDS, settings.FIREHOSE_READ_TIMEOUT_SECONDS)


def endpoint_not_usable(endpoint_url: str, reason: str) -> TransportError:
    return TransportError(
        "EndpointNotUsable",
        f"The Endpoint URL {_without_userinfo(endpoint_url)} cannot be used: {reason} "
        "Correct it in the configuration (or leave it blank for AWS), then Resume the connection.",
        retryable=False,
        reason=Reason.ENDPOINT_NOT_USABLE,
    )


def _without_userinfo(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if rest else url


def client_for(credentials: Credentials, timeouts: Timeouts | None = None) -> Any:
    """A cached boto3 client: retries are ours (scheduled in the database), so botocore makes exactly one try.
    Raises TransportError when the endpoint cannot be used."""
    return _client_create(credentials, timeouts or delivery_timeouts())


@functools.lru_cache(maxsize=256)  # a failure is not cached: it raises
def _client_create(credentials: Credentials, timeouts: Timeouts) -> Any:
    endpoint_url = credentials.endpoint_url
    if endpoint_url and (reason := endpoint_url_error(endpoint_url)):
        raise endpoint_not_usable(endpoint_url, reason)
    config = Config(
        parameter_validation=False,  # we build the requests; validating 500 records costs more than sending
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
        max_pool_connections=4,
    )
    try:
        client = boto3.session.Session().client(
            "firehose",
            region_name=credentials.region,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            endpoint_url=endpoint_url or None,
            config=config,
        )
    except ValueError:  # botocore refuses the URL: a host name it cannot use, a malformed address
        raise endpoint_not_usable(
            endpoint_url,
            "botocore does not accept it (write an internationalised host name in its xn-- form, an IPv6 address "
            "in brackets).",
        ) from None
    if endpoint_url:
        client_connections_checked(client)
    return client


def scrub(text: str, credentials: Credentials) -> str:
    for secret in (credentials.secret_access_key, credentials.access_key_id):
        if secret:
            text = text.replace(secret, "***")
    return text[:2000]


def classify(exc: Exception, credentials: Credentials) -> TransportError:
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, ClientError):
        return _classify_answer(exc, credentials)
    if isinstance(exc, HTTPClientError) and isinstance(exc.kwargs.get("error"), EndpointRefused):
        return endpoint_not_usable(credentials.endpoint_url, f"{exc.kwargs['error']}.")
    # No answer, or none botocore could read: the network, a timeout.
    return TransportError(type(exc).__name__, scrub(str(exc), credentials), retryable=True, reason=Reason.UNREACHABLE)


def _classify_answer(exc: ClientError, credentials: Credentials) -> TransportError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "Unknown")
    message = str(error.get("Message") or "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code.isdigit():
        # Not an AWS JSON error (botocore gives the HTTP status as the code and the body as the message): whatever
        # answered is not Firehose, and its body is never stored or shown. An XML error document's code is kept.
        inner_code = _XML_CODE.search(message) if message.lstrip().startswith("<") else None
        code = inner_code.group(1) if inner_code and _TOKEN.fullmatch(inner_code.group(1)) else code
        message = f"unexpected HTTP {status or code} answer from the endpoint"
        if code.isdigit() and status and 400 <= status < 500 and status not in (401, 403, 429):
            # A page that is not there, a method not allowed: the URL does not lead to Firehose, retrying won't help.
            return _error(code, message, retryable=False, reason=Reason.ENDPOINT_NOT_USABLE, status=status)
    code, message = scrub(code, credentials)[:128], scrub(message, credentials)
    if code in PERMANENT_CODES:
        return _error(code, message, retryable=False, reason=PERMANENT_CODES[code], status=status)
    if code == "InvalidArgumentException" and "size" in message.lower():
        return _error(code, message, retryable=False, reason=Reason.RECORD_TOO_LARGE, status=status)
    if code == THROTTLED or (status or 0) >= 500:
        reason = Reason.THROTTLED if code == THROTTLED else Reason.SERVER_ERROR
        return _error(code, message, retryable=True, reason=reason, status=status)
    if status in (401, 403):
        return _error(code, message, retryable=False, reason=Reason.ACCESS_DENIED, status=status)
    return _error(code, message, retryable=True, reason=Reason.SERVER_ERROR, status=status)


def _error(code: str, message: str, *, retryable: bool, reason: Reason, status: int | None) -> TransportError:
    return TransportError(
        code, message, retryable=retryable, reason=reason, status=status, hint=PLAIN_WORDS.get(code, "")
    )


def put_record_batch(credentials: Credentials, stream_name: str, records: list[bytes]) -> list[EntryFailure]:
    """Send one PutRecordBatch. Returns the failed entries (empty when all were accepted); raises TransportError."""
    try:
        response = client_for(credentials).put_record_batch(
            DeliveryStreamName=stream_name, Records=[{"Data": data} for data in records]
        )
    except Exception as exc:  # noqa: BLE001 - every failure is classified, none escapes unclassified
        raise classify(exc, credentials) from None
    if not response.get("FailedPutCount"):
        return []
    # Firehose's entry errors (ServiceUnavailableException, InternalFailure) can all be retried.
    return [
        EntryFailure(
            index,
            entry["ErrorCode"],
            scrub(entry.get("ErrorMessage", ""), credentials),
            reason=Reason.THROTTLED if entry["ErrorCode"] == THROTTLED else Reason.SERVER_ERROR,
        )
        for index, entry in enumerate(response["RequestResponses"])
        if entry.get("ErrorCode")
    ]


def put_record(credentials: Credentials, stream_name: str, record: bytes) -> None:
    try:
        client_for(credentials).put_record(DeliveryStreamName=stream_name, Record={"Data": record})
    except Exception as exc:  # noqa: BLE001
        raise classify(exc, credentials) from None


def describe_delivery_stream(
    credentials: Credentials, stream_name: str, timeouts: Timeouts | None = None
) -> StreamDescription:
    try:
        description = client_for(credentials, timeouts).describe_delivery_stream(DeliveryStreamName=stream_name)[
            "DeliveryStreamDescription"
        ]
    except Exception as exc:  # noqa: BLE001
        raise classify(exc, credentials) from None
    return StreamDescription(
        name=description["DeliveryStreamName"],
        arn=description["DeliveryStreamARN"],
        status=description["DeliveryStreamStatus"],
        type=description.get("DeliveryStreamType", ""),
    )


class FirehoseTransport:
    """A Firehose delivery stream (`transport.base.Transport`)."""

    name: ClassVar[str] = "Firehose"
    limits: ClassVar[Limits] = LIMITS
    batch_operation: ClassVar[str] = "PutRecordBatch"
    single_operation: ClassVar[str] = "PutRecord"
    batch_permission: ClassVar[str] = "firehose:PutRecordBatch"

    def __init__(self, credentials: Credentials, stream_name: str):
        self.credentials = credentials
        self.stream_name = stream_name

    def send_batch(self, records: list[bytes], keys: list[str]) -> list[EntryFailure]:
        return put_record_batch(self.credentials, self.stream_name, records)  # Firehose takes no partition keys

    def send_one(self, record: bytes, key: str) -> None:
        put_record(self.credentials, self.stream_name, record)

    def describe(self, timeouts: Timeouts | None = None) -> StreamDescription:
        return describe_delivery_stream(self.credentials, self.stream_name, timeouts)
