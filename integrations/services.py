"""Writes for configurations and connections: create, change, test, pause, resume, resync, and the outbox."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import InvalidToken
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import connection as db_connection
from django.db import transaction
from django.db.models import F, Min, QuerySet
from django.db.models.functions import Least
from django.utils import timezone

from audiences.models import Audience, Membership, MembershipChange
from project.transactions import atomic_with_retry

from . import firehose
from .layout import delivery_layout_lock_shared, delivery_shard_count
from .models import Configuration, Connection, Delivery, DrainLease

logger = logging.getLogger(__name__)

DELIVERY_INSERT_BATCH = 2000
DELIVERY_LOCK_SPACE = 7_246_001  # the first key of the advisory locks of deliveries_insert_lock


# --- kicks ------------------------------------------------------------------------------------------------------


BROKER_RETRY_AFTER_SECONDS = 5.0
# A kick expires in the broker after this long (a worker that takes it later drops it): a drain that late would only
# find what the sweep has kicked since.
KICK_EXPIRES_SECONDS = 300
# A kick already queued for a shard makes another one useless: at most one waits per shard (a mark in the cache,
# which the drain task clears as it starts). The mark lasts as long as the kick can; the sweep alone replaces a mark
# older than KICK_LOST_AFTER_SECONDS, whose kick was lost with the broker (or, with a cache that is not shared, is
# waiting in another process's memory).
KICK_PENDING_SECONDS = KICK_EXPIRES_SECONDS
KICK_LOST_AFTER_SECONDS = 60
_broker_down_until = 0.0


def kick_pending_key(connection_id: int, shard: int) -> str:
    return f"kick:{connection_id}:{shard}"


def connection_kick(
    connection_id: int, shard: int | None = None, *, replace_marks_older_than: float | None = None
) -> bool:
    """Ask workers to drain a connection: one shard, or every shard, unless a kick already waits for it. Best
    effort: when the broker is down, the beat sweep kicks later. Returns whether a kick was queued.

    After a failed publish, kicks are skipped for a few seconds, so that requests do not each wait for the broker.
    """
    global _broker_down_until
    from .tasks import drain_connection

    shards = range(delivery_shard_count(cached=True)) if shard is None else (shard,)
    queued = False
    for each in shards:
        if time.monotonic() < _broker_down_until:
            return queued
        if not _kick_mark(connection_id, each, replace_marks_older_than):
            continue  # a kick is already waiting for this shard
        try:
            drain_connection.apply_async((connection_id, each), expires=KICK_EXPIRES_SECONDS)
            queued = True
        except Exception:  # noqa: BLE001 - a lost kick is recovered by the sweep, it must not fail the caller
            kick_taken(connection_id, each)
            _broker_down_until = time.monotonic() + BROKER_RETRY_AFTER_SECONDS
            logger.warning("Could not queue a drain of connection %s; the sweep will pick it up.", connection_id)
    return queued


def _kick_mark(connection_id: int, shard: int, replace_older_than: float | None = None) -> bool:
    """Mark a kick as queued for this shard; False when one already was (and its mark is not too old to trust)."""
    key, now = kick_pending_key(connection_id, shard), time.time()
    try:
        if cache.add(key, now, timeout=KICK_PENDING_SECONDS):
            return True
        if replace_older_than is None:
            return False
        marked = cache.get(key)
        if marked is not None and now - float(marked) <= replace_older_than:
            return False
        cache.set(key, now, timeout=KICK_PENDING_SECONDS)
        return True
    except Exception:  # noqa: BLE001 - without the cache, kick anyway
        return True


def kick_taken(connection_id: int, shard: int) -> None:
    """A drain task started: the next change needs a kick of its own."""
    try:
        cache.delete(kick_pending_key(connection_id, shard))
    except Exception:  # noqa: BLE001
        pass


def connections_kick_on_commit(connection_ids: Iterable[int]) -> None:
    for connection_id in sorted(set(connection_ids)):
        transaction.on_commit(lambda connection_id=connection_id: connection_kick(connection_id))


# --- the outbox -------------------------------------------------------------------------------------------------


def deliveries_create_for_changes(changes: Sequence[MembershipChange]) -> None:
    """Write the deliveries of freshly saved changes, in change order, and kick the active connections concerned.

    Must run inside the transaction that saved the changes: a change and its deliveries commit together. Each change
    needs `pk`, `audience_id`, `user_id`, `kind` and `timestamp`. The audiences are locked against connections being
    created or deleted (project.transactions, step 1), so the connections read here are those at commit.
    """
    audience_ids = {change.audience_id for change in changes}
    connections: dict[int, list[tuple[int, bool]]] = {}
    active: set[int] = set()
    for connection_id, audience_id, send_remove, status in Connection.objects.filter(
        audience_id__in=audience_ids
    ).values_list("id", "audience_id", "configuration__send_remove_on_identity_change", "status"):
        connections.setdefault(audience_id, []).append((connection_id, send_remove))
        if status == Connection.Status.ACTIVE:
            active.add(connection_id)
    if not connections:
        return
    connection_ids = sorted(connection_id for items in connections.values() for connection_id, _ in items)
    shards = deliveries_insert_lock(connection_ids)
    if db_connection.vendor == "postgresql":
        _deliveries_insert_select([change.pk for change in changes], connection_ids, shards)
    else:
        _deliveries_bulk_create(changes, connections, shards)
    connections_kick_on_commit(active)  # a paused or faulted connection is kicked when it resumes


def deliveries_insert_lock(connection_ids: Iterable[int]) -> int:
    """Hold, until the transaction ends, the right to queue deliveries on these connections; returns the shard count
    to queue them with (held as well).

    So a connection's deliveries become visible in id order: a transaction takes its ids only after the previous
    one committed. A drain can then start each claim after the last id it settled (`DrainLease.claimed_through`)
    without missing a row that committed late with a lower id. Locks are taken in id order (no deadlock); SQLite
    runs one writing transaction at a time anyway.
    """
    shards = delivery_layout_lock_shared()
    if db_connection.vendor != "postgresql":
        return shards
    with db_connection.cursor() as cursor:
        cursor.execute(
            # Two int4 keys: a space of our own, and the id (ids past 2**31 share a lock: more waiting, never less).
            "SELECT pg_advisory_xact_lock(%s, (id %% 2147483647)::int) FROM unnest(%s::bigint[]) AS id ORDER BY id",
            [DELIVERY_LOCK_SPACE, sorted(set(connection_ids))],
        )
    return shards


def _deliveries_insert_select(change_ids: list[int], connection_ids: list[int], shards: int) -> None:
    """One INSERT ... SELECT from the saved changes and their audiences' connections (those given, which the caller
    holds the queue locks of): no row passes through Python. Ids follow the ORDER BY, so that a user's deliveries keep
    the order of the user's changes (the IsMember false record of an identity change first). The changes are read
    first, by primary key (MATERIALIZED): joined the other way round, the planner may scan every change ever made in
    the audience."""
    now = timezone.now()
    with db_connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH change AS MATERIALIZED (
                SELECT id, audience_id, user_id, kind, "timestamp" FROM {MembershipChange._meta.db_table}
                WHERE id = ANY(%(ids)s)
            )
            INSERT INTO {Delivery._meta.db_table}
                (connection_id, shard, kind, change_id, user_id, is_member, uses_previous_identities, "timestamp",
                 status, attempts, next_attempt_at, last_error, created_at)
            SELECT connection.id, change.user_id %% %(shards)s, %(kind)s, change.id, change.user_id, step.is_member,
                   step.uses_previous_identities, change."timestamp", %(pending)s, 0, %(now)s, '', %(now)s
            FROM change
            JOIN {Connection._meta.db_table} AS connection
              ON connection.audience_id = change.audience_id AND connection.id = ANY(%(connections)s)
            JOIN {Configuration._meta.db_table} AS configuration ON configuration.id = connection.configuration_id
            CROSS JOIN LATERAL (
                VALUES (0, false, true), (1, change.kind <> %(left)s, false)
            ) AS step (number, is_member, uses_previous_identities)
            WHERE step.number = 1
               OR (change.kind = %(identities_changed)s AND configuration.send_remove_on_identity_change)
            ORDER BY change.id, connection.id, step.number
            """,
            {
                "shards": shards,
                "kind": Delivery.Kind.CHANGE,
                "pending": Delivery.Status.PENDING,
                "now": now,
                "left": MembershipChange.Kind.LEFT,
                "identities_changed": MembershipChange.Kind.IDENTITIES_CHANGED,
                "ids": change_ids,
                "connections": connection_ids,
            },
        )


def _deliveries_bulk_create(
    changes: Sequence[MembershipChange], connections: dict[int, list[tuple[int, bool]]], shards: int
) -> None:
    now = timezone.now()
    deliveries = []
    for change in changes:
        for connection_id, send_remove in connections.get(change.audience_id, ()):
            common = dict(
                connection_id=connection_id,
                shard=change.user_id % shards,
                kind=Delivery.Kind.CHANGE,
                change_id=change.pk,
                user_id=change.user_id,
                timestamp=change.timestamp,
                next_attempt_at=now,
                created_at=now,
            )
            if change.kind == MembershipChange.Kind.IDENTITIES_CHANGED and send_remove:
                deliveries.append(Delivery(is_member=False, uses_previous_identities=True, **common))
            deliveries.append(Delivery(is_member=change.kind != MembershipChange.Kind.LEFT, **common))
    Delivery.objects.bulk_create(deliveries, batch_size=DELIVERY_INSERT_BATCH)


def deliveries_create_for_audience_deletion(*, audience: Audience, timestamp: int) -> None:
    """One `AudienceDeleted` record per connection, queued after everything already pending (in shard 0, where it
    waits until the other shards have sent what was queued before it)."""
    now = timezone.now()
    # Connection rows before their queue locks (project.transactions, steps 2 and 5), as a resync page takes them.
    connection_ids = list(
        Connection.objects.select_for_update(no_key=True)
        .filter(audience=audience)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    deliveries_insert_lock(connection_ids)
    Delivery.objects.bulk_create(
        Delivery(
            connection_id=connection_id,
            kind=Delivery.Kind.AUDIENCE_DELETED,
            timestamp=timestamp,
            next_attempt_at=now,
            created_at=now,
        )
        for connection_id in connection_ids
    )
    Connection.objects.filter(pk__in=connection_ids).update(resync_cursor=None)
    connections_kick_on_commit(connection_ids)


# --- configurations ---------------------------------------------------------------------------------------------


@transaction.atomic
def configuration_create(
    *,
    name: str,
    access_key_id: str,
    secret_access_key: str,
    send_remove_on_identity_change: bool = True,
    endpoint_url: str = "",
) -> Configuration:
    configuration = Configuration(
        name=name,
        access_key_id=access_key_id,
        send_remove_on_identity_change=send_remove_on_identity_change,
        endpoint_url=endpoint_url,
    )
    configuration.secret_access_key = secret_access_key
    configuration.full_clean()
    configuration.save()
    return configuration


@transaction.atomic
def configuration_update(*, configuration: Configuration, secret_access_key: str = "", **fields: Any) -> Configuration:
    """Change settings. A blank secret keeps the stored one; any other value replaces it."""
    for field, value in fields.items():
        setattr(configuration, field, value)
    changed = [*fields, "updated_at"]
    if secret_access_key:
        configuration.secret_access_key = secret_access_key
        changed.append("encrypted_secret_access_key")
    configuration.full_clean()
    configuration.save(update_fields=changed)
    return configuration


# --- connections ------------------------------------------------------------------------------------------------

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
    from .tasks import purge_deleted_connections

    transaction.on_commit(lambda: _publish(purge_deleted_connections))


def _publish(task: Any) -> None:
    try:
        task.apply_async(expires=3600)
    except Exception:  # noqa: BLE001 - the hourly retention purges what a lost task left
        logger.warning("Could not queue %s; the hourly retention will run it.", task.name)


@dataclass(frozen=True)
class ConnectionTestResult:
    ok: bool
    stream_status: str = ""
    stream_arn: str = ""
    error: str = ""


def connection_credentials(connection: Connection) -> firehose.Credentials:
    """The connection's credentials, decrypted in memory; FirehoseError (permanent) when no key decrypts them."""
    configuration = connection.configuration
    try:
        secret_access_key = configuration.secret_access_key
    except InvalidToken:
        raise firehose.FirehoseError(
            "SecretNotDecryptable",
            "No key of FIELD_ENCRYPTION_KEYS decrypts the configuration's Secret Access Key: add the key it was "
            "encrypted with to FIELD_ENCRYPTION_KEYS (then run manage.py rotate_encryption_keys), or enter the "
            "secret again in the configuration, then Resume the connection.",
            retryable=False,
            alert=firehose.ALERT_CREDENTIALS_NOT_USABLE,
        ) from None
    return firehose.Credentials(
        access_key_id=configuration.access_key_id,
        secret_access_key=secret_access_key,
        region=connection.region,
        endpoint_url=configuration.endpoint_url,
    )


def connection_test(*, connection: Connection) -> ConnectionTestResult:
    """DescribeDeliveryStream: the stream's status and ARN, or what went wrong in plain words, within a few seconds
    (short timeouts: an operator is waiting)."""
    try:
        stream = firehose.describe_delivery_stream(
            connection_credentials(connection), connection.stream_name, firehose.TEST_TIMEOUTS
        )
    except firehose.FirehoseError as error:
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
