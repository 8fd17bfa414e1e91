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
from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from django.conf import settings

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
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


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


_clients: dict[Credentials, Any] = {}
_clients_lock = threading.Lock()


def client_for(credentials: Credentials) -> Any:
    """A cached boto3 client: retries are ours (scheduled in the database), so botocore makes exactly one try."""
    with _clients_lock:
        client = _clients.get(credentials)
        if client is None:
            config = Config(
                parameter_validation=False,  # we build the requests; validating 500 records costs more than sending
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=settings.FIREHOSE_CONNECT_TIMEOUT_SECONDS,
                read_timeout=settings.FIREHOSE_READ_TIMEOUT_SECONDS,
                max_pool_connections=4,
            )
            client = boto3.session.Session().client(
                "firehose",
                region_name=credentials.region,
                aws_access_key_id=credentials.access_key_id,
                aws_secret_access_key=credentials.secret_access_key,
                endpoint_url=credentials.endpoint_url or None,
                config=config,
            )
            if len(_clients) > 256:
                _clients.clear()
            _clients[credentials] = client
        return client


def scrub(text: str, credentials: Credentials) -> str:
    for secret in (credentials.secret_access_key, credentials.access_key_id):
        if secret:
            text = text.replace(secret, "***")
    return text[:2000]


def classify(exc: Exception, credentials: Credentials) -> FirehoseError:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        message = str(error.get("Message") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if message.lstrip().startswith("<"):
            # Some gateways and emulators answer a JSON-protocol call with an XML error document.
            inner_code, inner_message = _XML_CODE.search(message), _XML_MESSAGE.search(message)
            code = inner_code.group(1) if inner_code else code
            message = inner_message.group(1) if inner_message else message
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
    if isinstance(exc, BotoConnectionError):
        return FirehoseError(type(exc).__name__, scrub(str(exc), credentials), retryable=True, alert=None)
    if isinstance(exc, BotoCoreError):
        return FirehoseError(type(exc).__name__, scrub(str(exc), credentials), retryable=True, alert=None)
    return FirehoseError(type(exc).__name__, scrub(str(exc), credentials), retryable=True, alert=None)


def put_record_batch(credentials: Credentials, stream_name: str, records: list[bytes]) -> list[EntryFailure]:
    """Send one PutRecordBatch. Returns the failed entries (empty when all were accepted); raises FirehoseError."""
    client = client_for(credentials)
    try:
        response = client.put_record_batch(DeliveryStreamName=stream_name, Records=[{"Data": data} for data in records])
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
    client = client_for(credentials)
    try:
        client.put_record(DeliveryStreamName=stream_name, Record={"Data": record})
    except Exception as exc:  # noqa: BLE001
        raise classify(exc, credentials) from None


@dataclass(frozen=True)
class StreamDescription:
    name: str
    arn: str
    status: str
    type: str


def describe_delivery_stream(credentials: Credentials, stream_name: str) -> StreamDescription:
    client = client_for(credentials)
    try:
        description = client.describe_delivery_stream(DeliveryStreamName=stream_name)["DeliveryStreamDescription"]
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
