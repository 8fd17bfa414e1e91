"""What the stages of a drain pass to each other: the pending rows read for a batch, the batch, the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from ..models import Connection, Delivery


@dataclass
class DrainReport:
    batches: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    more_work: bool = False
    leased: bool = True
    parked_until: datetime | None = None  # the shard waits for its place under the rate limit until then


class Pending(NamedTuple):
    """A pending delivery with what its record needs, read in one query without building model instances."""

    pk: int
    kind: int
    user_id: int | None
    is_member: bool | None
    uses_previous_identities: bool
    timestamp: int
    change_identities: dict | None
    change_previous_identities: dict | None
    user_identities: dict | None
    created_at: datetime
    user_external_id: str | None


PENDING_FIELDS = (
    "pk",
    "kind",
    "user_id",
    "is_member",
    "uses_previous_identities",
    "timestamp",
    "change__identities",
    "change__previous_identities",
    "resync_identities",
    "created_at",
    "user__external_id",
)


@dataclass
class Batch:
    deliveries: list[Pending] = field(default_factory=list)
    records: list[bytes] = field(default_factory=list)
    # Each record's partition key: the user's id, or the audience's for its deletion record (a stream that orders by
    # key keeps each user's records in order; Firehose has no keys and ignores them).
    keys: list[str] = field(default_factory=list)
    size: int = 0
    # Where the shard's next claim starts once this batch is delivered: every pending delivery of the shard up to
    # this id is in the batch.
    claimed_through: int = 0
    # The audience's deletion record waits for the other shards to send what was queued before it.
    waiting_for_other_shards: bool = False


def is_resync(delivery: Pending) -> bool:
    return delivery.kind == Delivery.Kind.RESYNC


def connection_for_drain(connection_id: int) -> Connection | None:
    """The connection with what a drain reads of it; None once it was deleted."""
    return Connection.objects.select_related("configuration", "audience").filter(pk=connection_id).first()


def is_sendable(connection: Connection, now: datetime) -> bool:
    if connection.status != Connection.Status.ACTIVE:
        return False
    return connection.next_attempt_at is None or connection.next_attempt_at <= now
