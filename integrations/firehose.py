"""The Firehose transport: it sends and classifies, and never touches the ORM.

Every failure comes out as one `FirehoseError` that says whether a retry can help (`retryable`) and which
System Alert, if any, it maps to. Messages are scrubbed of the credentials before they leave this module.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from django.conf import settings

from .endpoints import EndpointRefused, client_connections_checked, endpoint_url_error

MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_RECORD_BYTES = 1000 * 1024

THROTTLED = "ServiceUnavailableException"  # the stream's rate limit: slow down, then retry

ALERT_RETRY_LIMIT_EXCEEDED = "Retry Limit Exceeded"
ALERT_INTERNAL_SERVER_ERROR = "500 - Internal Server Error"
ALERT_ACCESS_DENIED = "Access Denied"
ALERT_STREAM_NOT_FOUND = "Stream Not Found"
ALERT_STREAM_NOT_ACTIVE = "Stream Not Active"
ALERT_RECORD_TOO_LARGE = "Record Too Large"
ALERT_BATCH_NOT_PERMITTED = "Batch Not Permitted"
ALERT_ENDPOINT_NOT_USABLE = "Endpoint Not Usable"
ALERT_CREDENTIALS_NOT_USABLE = "Credentials Not Usable"

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
PERMANENT_CODES: dict[str, str] = {
    **{code: ALERT_ACCESS_DENIED for code in ACCESS_DENIED_CODES},
    "ResourceNotFoundException": ALERT_STREAM_NOT_FOUND,
    "ResourceInUseException": ALERT_STREAM_NOT_ACTIVE,
    "InvalidKMSResourceException": ALERT_STREAM_NOT_ACTIVE,
    "InvalidSourceException": ALERT_STREAM_NOT_ACTIVE,
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


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str
    endpoint_url: str = ""


class FirehoseError(Exception):
    def __init__(self, code: str, message: str, *, retryable: bool, alert: str | None, status: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.alert = alert
        self.status = status

    @property
    def is_access_denied(self) -> bool:
        return self.alert == ALERT_ACCESS_DENIED

    @property
    def is_throttled(self) -> bool:
        return self.code == THROTTLED

    @property
    def plain_words(self) -> str:
        words = PLAIN_WORDS.get(self.code)
        return f"{words} ({self.code}: {self.message})" if words else f"{self.code}: {self.message}"


@dataclass(frozen=True)
class EntryFailure:
    index: int
    code: str
    message: str


@dataclass(frozen=True)
class Timeouts:
    connect: float
    read: float


def delivery_timeouts() -> Timeouts:
    return Timeouts(settings.FIREHOSE_CONNECT_TIMEOUT_SECONDS, settings.FIREHOSE_READ_TIMEOUT_SECONDS)


# Test connection runs in a web request: an operator waits for it, so it gives up sooner than a delivery.
TEST_TIMEOUTS = Timeouts(connect=2.0, read=3.0)

_clients: dict[tuple[Credentials, Timeouts], Any] = {}
_clients_lock = threading.Lock()


def endpoint_not_usable(endpoint_url: str, reason: str) -> FirehoseError:
    return FirehoseError(
        "EndpointNotUsable",
        f"The Endpoint URL {_without_userinfo(endpoint_url)} cannot be used: {reason} "
        "Correct it in the configuration (or leave it blank for AWS), then Resume the connection.",
        retryable=False,
        alert=ALERT_ENDPOINT_NOT_USABLE,
    )


def _without_userinfo(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if rest else url


def client_for(credentials: Credentials, timeouts: Timeouts | None = None) -> Any:
    """A cached boto3 client: retries are ours (scheduled in the database), so botocore makes exactly one try.
    Raises FirehoseError when the endpoint cannot be used."""
    timeouts = timeouts or delivery_timeouts()
    with _clients_lock:
        client = _clients.get((credentials, timeouts))
        if client is None:
            client = _client_create(credentials, timeouts)
            if len(_clients) > 256:
                _clients.clear()
            _clients[(credentials, timeouts)] = client
        return client


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


def classify(exc: Exception, credentials: Credentials) -> FirehoseError:
    if isinstance(exc, FirehoseError):
        return exc
    if isinstance(exc, ClientError):
        return _classify_answer(exc, credentials)
    if isinstance(exc, HTTPClientError) and isinstance(exc.kwargs.get("error"), EndpointRefused):
        return endpoint_not_usable(credentials.endpoint_url, f"{exc.kwargs['error']}.")
    if isinstance(exc, BotoConnectionError):
        return FirehoseError(type(exc).__name__, scrub(str(exc), credentials), retryable=True, alert=None)
    if isinstance(exc, BotoCoreError):
        return FirehoseError(type(exc).__name__, scrub(str(exc), credentials), retryable=True, alert=None)
    return FirehoseError(type(exc).__name__, scrub(str(exc), credentials), retryable=True, alert=None)


def _classify_answer(exc: ClientError, credentials: Credentials) -> FirehoseError:
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
            return FirehoseError(code, message, retryable=False, alert=ALERT_ENDPOINT_NOT_USABLE, status=status)
    code, message = scrub(code, credentials)[:128], scrub(message, credentials)
    if code in PERMANENT_CODES:
        return FirehoseError(code, message, retryable=False, alert=PERMANENT_CODES[code], status=status)
    if code == "InvalidArgumentException" and "size" in message.lower():
        return FirehoseError(code, message, retryable=False, alert=ALERT_RECORD_TOO_LARGE, status=status)
    if code == THROTTLED or (status or 0) >= 500:
        return FirehoseError(code, message, retryable=True, alert=ALERT_INTERNAL_SERVER_ERROR, status=status)
    if status in (401, 403):
        return FirehoseError(code, message, retryable=False, alert=ALERT_ACCESS_DENIED, status=status)
    return FirehoseError(code, message, retryable=True, alert=ALERT_INTERNAL_SERVER_ERROR, status=status)


def put_record_batch(credentials: Credentials, stream_name: str, records: list[bytes]) -> list[EntryFailure]:
    """Send one PutRecordBatch. Returns the failed entries (empty when all were accepted); raises FirehoseError."""
    try:
        response = client_for(credentials).put_record_batch(
            DeliveryStreamName=stream_name, Records=[{"Data": data} for data in records]
        )
    except Exception as exc:  # noqa: BLE001 - every failure is classified, none escapes unclassified
        raise classify(exc, credentials) from None
    if not response.get("FailedPutCount"):
        return []
    return [
        EntryFailure(index, entry["ErrorCode"], scrub(entry.get("ErrorMessage", ""), credentials))
        for index, entry in enumerate(response["RequestResponses"])
        if entry.get("ErrorCode")
    ]


def put_record(credentials: Credentials, stream_name: str, record: bytes) -> None:
    try:
        client_for(credentials).put_record(DeliveryStreamName=stream_name, Record={"Data": record})
    except Exception as exc:  # noqa: BLE001
        raise classify(exc, credentials) from None


@dataclass(frozen=True)
class StreamDescription:
    name: str
    arn: str
    status: str
    type: str


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


def monotonic_ms(start: float) -> int:
    return max(0, int((time.monotonic() - start) * 1000))
