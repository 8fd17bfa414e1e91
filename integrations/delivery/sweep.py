"""The beat's sweep: kick every shard with due work and no live drain. Recovers lost kicks, scheduled retries and
shards parked by the rate limit."""

from __future__ import annotations

import functools
import logging
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from ..kicks import KICK_LOST_AFTER_SECONDS, connection_kick
from ..layout import delivery_shard_count
from ..models import Connection, Delivery, DrainLease
from .batch import is_sendable

logger = logging.getLogger(__name__)

_DUE_WORK_FIELDS = ("status", "next_attempt_at", "resync_cursor")


def connections_sweep() -> list[tuple[int, int]]:
    """Kick every shard of an active connection with due work and no live drain, unless a kick already waits for
    it. Returns the (connection, shard) pairs kicked."""
    now = timezone.now()
    leases = {
        (connection_id, shard): (expires_at, claimed_through, not_before)
        for connection_id, shard, expires_at, claimed_through, not_before in DrainLease.objects.filter(
            connection__status=Connection.Status.ACTIVE
        ).values_list("connection_id", "shard", "expires_at", "claimed_through", "not_before")
    }
    shards = delivery_shard_count()
    if shards != settings.DELIVERY_SHARDS:
        _warn_shards_differ(settings.DELIVERY_SHARDS, shards)
    due = []
    for connection in Connection.objects.filter(status=Connection.Status.ACTIVE).only(*_DUE_WORK_FIELDS):
        for shard in range(shards):
            expires_at, claimed_through, not_before = leases.get((connection.pk, shard), (None, 0, None))
            if expires_at is not None and expires_at >= now:
                continue  # a drain is running on it
            if not_before is not None and not_before > now:
                continue  # waiting for its place under the rate limit
            if shard_has_due_work(connection, shard, claimed_through, now):
                due.append((connection.pk, shard))
    return [
        (connection_id, shard)
        for connection_id, shard in due
        if connection_kick(connection_id, shard, replace_marks_older_than=KICK_LOST_AFTER_SECONDS)
    ]


@functools.cache  # once per process and pair of counts
def _warn_shards_differ(configured: int, stored: int) -> None:
    logger.warning(
        "DELIVERY_SHARDS is %s here but the database splits the backlogs into %s shards: run manage.py migrate "
        "(or manage.py reshard_deliveries) to change it.",
        configured,
        stored,
    )


def connection_has_due_work(connection_id: int, shard: int, claimed_through: int) -> bool:
    connection = Connection.objects.filter(pk=connection_id).only(*_DUE_WORK_FIELDS).first()
    if connection is None:
        return False
    lease = DrainLease.objects.filter(connection_id=connection_id, shard=shard).values_list("not_before").first()
    if lease and lease[0] and lease[0] > timezone.now():
        return False
    return shard_has_due_work(connection, shard, claimed_through, timezone.now())


def shard_has_due_work(connection: Connection, shard: int, claimed_through: int, now: datetime) -> bool:
    if not is_sendable(connection, now):
        return False
    if connection.resync_running:
        return True
    pending = Delivery.objects.filter(
        connection_id=connection.pk, shard=shard, status=Delivery.Status.PENDING, pk__gt=claimed_through
    )
    return pending.exists()
