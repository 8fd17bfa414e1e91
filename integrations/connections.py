"""Writes for connections (Connection Settings): create, change, test, pause, resume, resync, delete, and Retry
failed. Every write that changes what a connection sends takes its locks in the order of project.transactions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Min, QuerySet
from django.db.models.functions import Least
from django.utils import timezone

from audiences.models import Audience, Membership
from project.transactions import atomic_with_retry

from .destinations import connection_transport
from .kicks import connections_kick_on_commit, purge_deleted_kick
from .models import Configuration, Connection, Delivery, DrainLease
from .transport.base import TEST_TIMEOUTS, TransportError

# Changing one of these changes the rate the connection may send at: the send slot starts again from now.
RATE_FIELDS = frozenset({"max_records_per_second", "max_bytes_per_second", "region"})


class AudienceGone(Exception):
    pass


def _audience_lock_exclusive(audience_id: int) -> Audience:
    """Lock the audience against batches of changes until the transaction ends (project.transactions, step 1): the
    open ones commit first, later ones wait, so a connection is created or deleted between two batches, never
    during one."""
    audience = Audience.objects.select_for_update().get(pk=audience_id)
    if audience.is_deleted:
        raise AudienceGone(audience_id)
    return audience


@atomic_with_retry
def connection_create(*, audience: Audience, configuration: Configuration, **fields: Any) -> Connection:
    """Create a connection; an active one starts its initial sync (one IsMember true record per member)."""
    connection = Connection(audience=audience, configuration=configuration, **fields)
    connection.full_clean()
    try:
        _audience_lock_exclusive(audience.pk)
    except AudienceGone:
        raise ValidationError({"audience": [f"The audience #{audience.pk} was deleted."]}) from None
    connection.save()
    if connection.status == Connection.Status.ACTIVE:
        connection_resync(connection=connection)
    return connection


@atomic_with_retry
def connection_update(*, connection: Connection, **fields: Any) -> Connection:
    """Change settings; only the fields given are written (the drains write the connection's counters meanwhile)."""
    for field, value in fields.items():
        setattr(connection, field, value)
    connection.full_clean()
    connection.save(update_fields=[*fields, "updated_at"])
    if RATE_FIELDS & set(fields):
        _send_slot_reset(connection.pk)
    connections_kick_on_commit([connection.pk])
    return connection


def _send_slot_reset(connection_id: int) -> None:
    """The rate limit starts again from now: no batch waits for a place reserved under the old settings."""
    Connection.objects.filter(pk=connection_id).update(send_slot_at=None)
    DrainLease.objects.filter(connection_id=connection_id).update(not_before=None)


@atomic_with_retry
def connection_resync(*, connection: Connection) -> Connection:
    """After the backlog, send one IsMember true record for every current member, with current identities."""
    audience = Audience.objects.get(pk=connection.audience_id)
    if audience.is_deleted:
        return connection
    now = timezone.now()
    # Members who join later get their own change records: the resync covers the memberships that exist now.
    last_membership = Membership.objects.filter(audience=audience).order_by("-pk").values_list("pk", flat=True).first()
    Connection.objects.filter(pk=connection.pk).update(
        resync_cursor=0,
        resync_until=last_membership or 0,
        resync_total=audience.member_count,
        resync_queued=0,
        resync_sent=0,
        resync_requested_at=now,
    )
    connection.refresh_from_db()
    connections_kick_on_commit([connection.pk])
    return connection


def connection_pause(*, connection: Connection) -> Connection:
    Connection.objects.filter(pk=connection.pk).update(status=Connection.Status.PAUSED, updated_at=timezone.now())
    connection.refresh_from_db()
    return connection


@atomic_with_retry
def connection_resume(*, connection: Connection) -> Connection:
    """Back to active with a fresh retry budget and a fresh send slot: the backlog is sent in order."""
    Connection.objects.filter(pk=connection.pk).update(
        status=Connection.Status.ACTIVE,
        consecutive_failures=0,
        next_attempt_at=None,
        batch_permitted=True,
        updated_at=timezone.now(),
    )
    _send_slot_reset(connection.pk)
    connection.refresh_from_db()
    connections_kick_on_commit([connection.pk])
    return connection


@atomic_with_retry
def connection_delete(*, connection: Connection) -> None:
    """Delete a connection: it disappears at once (and stops sending); its deliveries, attempts, counters and alerts
    are purged in the background, in short batches (`connections_purge_deleted`)."""
    try:
        _audience_lock_exclusive(connection.audience_id)
    except AudienceGone:
        pass  # its deletion record is queued or sent: nothing more goes out on it either way
    Connection.objects.filter(pk=connection.pk).update(
        deleted_at=timezone.now(), status=Connection.Status.PAUSED, resync_cursor=None
    )
    transaction.on_commit(purge_deleted_kick)


@dataclass(frozen=True)
class ConnectionTestResult:
    ok: bool
    stream_status: str = ""
    stream_arn: str = ""
    error: str = ""


def connection_test(*, connection: Connection) -> ConnectionTestResult:
    """DescribeDeliveryStream: the stream's status and ARN, or what went wrong in plain words, within a few seconds
    (short timeouts: an operator is waiting)."""
    try:
        stream = connection_transport(connection).describe(TEST_TIMEOUTS)
    except TransportError as error:
        Connection.objects.filter(pk=connection.pk).update(last_tested_at=timezone.now())
        return ConnectionTestResult(ok=False, error=error.plain_words)
    Connection.objects.filter(pk=connection.pk).update(stream_arn=stream.arn, last_tested_at=timezone.now())
    connection.stream_arn = stream.arn
    if stream.status != "ACTIVE":
        return ConnectionTestResult(
            ok=False,
            stream_status=stream.status,
            stream_arn=stream.arn,
            error=f"The delivery stream is {stream.status}, not ACTIVE: it cannot accept records yet.",
        )
    return ConnectionTestResult(ok=True, stream_status=stream.status, stream_arn=stream.arn)


@atomic_with_retry
def _failed_requeue(connection: Connection, delivery_ids: Sequence[int] | None) -> int:
    failed = Delivery.objects.filter(connection=connection, status=Delivery.Status.FAILED)
    if delivery_ids is not None:
        failed = failed.filter(pk__in=list(delivery_ids))
    oldest = failed.values("shard").annotate(first=Min("pk")).order_by()
    for row in oldest:  # a shard without a lease row yet starts its claims from the beginning anyway
        DrainLease.objects.filter(connection=connection, shard=row["shard"]).update(
            claimed_through=Least(F("claimed_through"), row["first"] - 1), token="", expires_at=None
        )
    return failed.update(
        status=Delivery.Status.PENDING, next_attempt_at=timezone.now(), last_error="", delivered_at=None
    )


def deliveries_retry_failed(*, connection: Connection, delivery_ids: Sequence[int] | None = None) -> int:
    """Queue the connection's failed deliveries again (all of them, or these), like Svix's Recover Failed: they are
    sent with the connection's current settings, after the records of their users delivered meanwhile. Returns how
    many were queued.

    Claims start after each shard's `claimed_through`, so it is moved back before the oldest requeued delivery; the
    shards' leases are released with it, so that a drain running now stops at its next renewal instead of writing
    its own, later `claimed_through` back (the batch it has in flight may then be sent twice, never lost)."""
    queued = _failed_requeue(connection, delivery_ids)
    if queued and connection.status == Connection.Status.ACTIVE:
        connections_kick_on_commit([connection.pk])
    return queued


# --- a selection of connections or deliveries at a time (the operator console's actions) --------------------------

RETRY_FAILED_LIMIT = 100_000  # deliveries queued again by one deliveries_retry_failed_selected


@dataclass(frozen=True)
class FailedRequeued:
    queued: int
    connections: int  # the connections the failed deliveries are on


def deliveries_retry_failed_selected(*, deliveries: QuerySet[Delivery]) -> FailedRequeued:
    """Like Svix's Recover Failed: those of the deliveries that failed (up to RETRY_FAILED_LIMIT) are queued again,
    connection by connection (`deliveries_retry_failed`); the others are left as they are."""
    failed = deliveries.filter(status=Delivery.Status.FAILED).order_by()
    by_connection: dict[int, list[int]] = {}
    for connection_id, pk in failed.values_list("connection_id", "pk")[: RETRY_FAILED_LIMIT + 1]:
        by_connection.setdefault(connection_id, []).append(pk)
    queued = 0
    for connection in Connection.objects.filter(pk__in=by_connection):
        queued += deliveries_retry_failed(connection=connection, delivery_ids=by_connection[connection.pk])
    return FailedRequeued(queued=queued, connections=len(by_connection))


@dataclass(frozen=True)
class ResyncStarted:
    started: list[Connection]
    skipped: list[Connection]  # of a deleted audience: nothing more goes out on them


def connections_resync(*, connections: Iterable[Connection]) -> ResyncStarted:
    """`connection_resync` on each connection but those of a deleted audience."""
    started: list[Connection] = []
    skipped: list[Connection] = []
    for connection in connections:
        if connection.audience.is_deleted:
            skipped.append(connection)
            continue
        connection_resync(connection=connection)
        started.append(connection)
    return ResyncStarted(started=started, skipped=skipped)


def connections_test(*, connections: QuerySet[Connection]) -> list[tuple[Connection, ConnectionTestResult]]:
    """`connection_test` on each connection, one after the other."""
    return [
        (connection, connection_test(connection=connection))
        for connection in connections.select_related("configuration", "audience")
    ]


@dataclass(frozen=True)
class StatusChanged:
    changed: list[Connection]
    unchanged: int  # connections that had that status already


def connections_pause(*, connections: QuerySet[Connection]) -> StatusChanged:
    """Pause the connections that are not paused yet."""
    return _connections_status_set(connections, Connection.Status.PAUSED, connection_pause)


def connections_resume(*, connections: QuerySet[Connection]) -> StatusChanged:
    """Resume the connections that are not active yet."""
    return _connections_status_set(connections, Connection.Status.ACTIVE, connection_resume)


def _connections_status_set(connections: QuerySet[Connection], status: str, service: Any) -> StatusChanged:
    changed = [service(connection=connection) for connection in connections.exclude(status=status)]
    return StatusChanged(changed=changed, unchanged=connections.count() - len(changed))


def connections_delete(*, connections: QuerySet[Connection]) -> None:
    for connection in connections.order_by("pk"):
        connection_delete(connection=connection)
