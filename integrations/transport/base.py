"""What the delivery engine asks of a destination, whatever it is: send these records, and say which were accepted,
which were not (and why, as a code: `Reason`), and whether a request that failed as a whole may be retried or
failed for good (`TransportError.retryable`). The engine retries every entry that failed in an accepted request.

A transport sends and classifies, and never touches the ORM. It says nothing of System Alerts either: the domain
maps reasons to alert types in one place (`integrations.alerts.ALERT_FOR_REASON`). Messages are scrubbed of the
credentials before they leave a transport.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, Protocol


class Reason(enum.StrEnum):
    """Why a request or an entry failed, in the engine's words."""

    THROTTLED = "throttled"  # the destination's rate limit: slow down, then retry
    SERVER_ERROR = "server_error"  # the destination failed, or answered with an error nothing more is known of
    UNREACHABLE = "unreachable"  # no answer: the network, a timeout
    ACCESS_DENIED = "access_denied"
    STREAM_NOT_FOUND = "stream_not_found"
    STREAM_NOT_ACTIVE = "stream_not_active"
    RECORD_TOO_LARGE = "record_too_large"
    ENDPOINT_NOT_USABLE = "endpoint_not_usable"
    CREDENTIALS_NOT_USABLE = "credentials_not_usable"


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str
    endpoint_url: str = ""


@dataclass(frozen=True)
class Timeouts:
    connect: float
    read: float


# Test connection runs in a web request: an operator waits for it, so it gives up sooner than a delivery.
TEST_TIMEOUTS = Timeouts(connect=2.0, read=3.0)


@dataclass(frozen=True)
class Limits:
    batch_records: int
    batch_bytes: int
    record_bytes: int


class TransportError(Exception):
    """A request that failed as a whole. `code` is the destination's own error code (kept in the attempt log),
    `hint` plain words about it for operators."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        reason: Reason,
        status: int | None = None,
        hint: str = "",
    ):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.reason = reason
        self.status = status
        self.hint = hint

    @property
    def is_access_denied(self) -> bool:
        return self.reason == Reason.ACCESS_DENIED

    @property
    def is_throttled(self) -> bool:
        return self.reason == Reason.THROTTLED

    @property
    def plain_words(self) -> str:
        return f"{self.hint} ({self.code}: {self.message})" if self.hint else f"{self.code}: {self.message}"


@dataclass(frozen=True)
class EntryFailure:
    """One record of an accepted request that the destination did not take; the others were accepted."""

    index: int
    code: str
    message: str
    reason: Reason = Reason.SERVER_ERROR


@dataclass(frozen=True)
class StreamDescription:
    name: str
    arn: str
    status: str
    type: str


class Transport(Protocol):
    """One destination stream, reached with one set of credentials."""

    name: ClassVar[str]  # what operators read in messages: "Firehose"
    limits: ClassVar[Limits]
    batch_operation: ClassVar[str]  # the names the attempt log shows
    single_operation: ClassVar[str]
    batch_permission: ClassVar[str]  # the IAM action the batch operation needs

    def send_batch(self, records: list[bytes], keys: list[str]) -> list[EntryFailure]:
        """Send up to `limits.batch_records` records, each with its partition key, in one request; returns the
        entries that failed (empty when every record was accepted). Raises TransportError when the request failed as
        a whole."""

    def send_one(self, record: bytes, key: str) -> None:
        """Send one record; raises TransportError."""

    def describe(self, timeouts: Timeouts | None = None) -> StreamDescription:
        """The stream's name, ARN and status; raises TransportError."""
