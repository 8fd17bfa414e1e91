"""The connection's rate limit: each batch takes its place (GCRA on `Connection.send_slot_at`, shared by every shard
of the connection) at the share of the limits in use (`Connection.send_rate`, AIMD)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.db.models import Case, DateTimeField, ExpressionWrapper, F, Q, Value, When
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from ..destinations import connection_transport_class
from ..models import Connection
from .batch import Batch, connection_for_drain

# AIMD on Connection.send_rate, the share of the rate limits in use.
SEND_RATE_DECREASE = 0.5  # multiplied in when the stream throttles
SEND_RATE_INCREASE = 0.02  # added per batch accepted in full, up to 1
SEND_RATE_FLOOR = 0.01
SEND_RATE_DECREASE_INTERVAL = timedelta(seconds=1)
# Unused sending time carried over to the next batches, at most: allows a short burst after a quiet spell.
SEND_BURST_SECONDS = 1.0
# A drain waits this long at most for its place under the rate limit, even past its time budget; a longer wait
# (never longer than a quarter of the lease) gives the shard back until then (`DrainLease.not_before`).
SEND_WAIT_SECONDS = 1.0


class Slot(NamedTuple):
    connection: Connection  # as it is now
    wait: float  # seconds to wait before sending
    cost: timedelta  # the batch's share of the rate limit


def batch_limits(connection: Connection) -> tuple[int, int]:
    """Records and bytes per batch: the stream's limits, and no more than about a second's worth of the rate
    limit."""
    limits = connection_transport_class(connection).limits
    rate = max(connection.send_rate, SEND_RATE_FLOOR)
    records = max(1, min(limits.batch_records, int(connection.records_per_second_limit * rate)))
    size = max(1, min(limits.batch_bytes, int(connection.bytes_per_second_limit * rate)))
    return records, size


def longest_wait(deadline: float) -> float:
    return min(settings.DRAIN_LEASE_SECONDS / 4, max(deadline - time.monotonic(), SEND_WAIT_SECONDS))


def send_slot_reserve(connection: Connection, batch: Batch) -> Slot:
    """Move the connection's `send_slot_at` on by the time this batch's records and bytes take at the allowed rate
    (GCRA, shared by every shard of the connection), and return the connection as it is now with the seconds to
    wait before sending. The update is atomic; a slot moved on by another shard in between only makes the wait
    longer, never shorter."""
    rate = max(connection.send_rate, SEND_RATE_FLOOR)
    cost = timedelta(
        seconds=max(
            len(batch.records) / (connection.records_per_second_limit * rate),
            batch.size / (connection.bytes_per_second_limit * rate),
            1 / (connection.quota.requests_per_second * rate),
        )
    )
    earliest = timezone.now() - timedelta(seconds=SEND_BURST_SECONDS)
    Connection.objects.filter(pk=connection.pk).update(
        send_slot_at=ExpressionWrapper(
            Greatest(Coalesce("send_slot_at", Value(earliest)), Value(earliest)) + Value(cost),
            output_field=DateTimeField(),
        )
    )
    now_connection = connection_for_drain(connection.pk)
    if now_connection is None:  # deleted meanwhile
        connection.status = Connection.Status.PAUSED
        return Slot(connection, 0.0, cost)
    if now_connection.send_slot_at is None:  # reset by a Resume or new rate settings meanwhile: go now
        return Slot(now_connection, 0.0, timedelta(0))
    wait = (now_connection.send_slot_at - cost - timezone.now()).total_seconds()
    return Slot(now_connection, wait, cost)


def send_slot_give_back(connection: Connection, cost: timedelta) -> None:
    """A batch that does not go now gives its place back: the slots taken by other shards since stay valid (their
    waits only come out longer than needed)."""
    Connection.objects.filter(pk=connection.pk, send_slot_at__isnull=False).update(
        send_slot_at=ExpressionWrapper(F("send_slot_at") - Value(cost), output_field=DateTimeField())
    )


def send_rate_decreased(now: datetime) -> dict[str, Case]:
    """Halve the send rate, at most once per SEND_RATE_DECREASE_INTERVAL: the requests in flight on the other shards
    when the stream started throttling answer the same congestion, not a new one."""
    due = Q(send_rate_lowered_at__isnull=True) | Q(send_rate_lowered_at__lt=now - SEND_RATE_DECREASE_INTERVAL)
    return {
        "send_rate": Case(
            When(due, then=Greatest(F("send_rate") * SEND_RATE_DECREASE, SEND_RATE_FLOOR)), default=F("send_rate")
        ),
        "send_rate_lowered_at": Case(When(due, then=Value(now)), default=F("send_rate_lowered_at")),
    }
