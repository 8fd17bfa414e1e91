"""The hand-written SQL of the integrations app, each statement beside its ORM twin where other databases need one.

PostgreSQL gets one INSERT ... SELECT where the ORM would pass every row through Python, and advisory locks where the
ORM has no lock to offer; SQLite, the embedded default of `make run`, runs one writing transaction at a time and
gets the ORM's statements. Table names come from the models' `_meta`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.db import connection as db_connection
from django.db.models import IntegerField
from django.db.models.expressions import RawSQL
from django.utils import timezone

from audiences.models import Membership, MembershipChange
from project.db import is_postgresql

from .models import Configuration, Connection, Delivery, DeliveryStats

DELIVERY_INSERT_BATCH = 2000
QUEUE_LOCK_SPACE = 7_246_001  # the first key of the advisory locks of `queue_locks_take`
LAYOUT_LOCK_SPACE = 7_246_002  # the advisory lock (space, 0) of the layout: shared by writers, exclusive to move


# --- locks (project.transactions, steps 4 and 5) ----------------------------------------------------------------


def layout_lock_shared() -> None:
    if is_postgresql():
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock_shared(%s, 0)", [LAYOUT_LOCK_SPACE])


def layout_lock_exclusive() -> None:
    if is_postgresql():
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", [LAYOUT_LOCK_SPACE])


def queue_locks_take(connection_ids: Sequence[int]) -> None:
    """The connections' queue locks, in id order, until the transaction ends."""
    if not is_postgresql():
        return
    with db_connection.cursor() as cursor:
        cursor.execute(
            # Two int4 keys: a space of our own, and the id (ids past 2**31 share a lock: more waiting, never less).
            "SELECT pg_advisory_xact_lock(%s, (id %% 2147483647)::int) FROM unnest(%s::bigint[]) AS id ORDER BY id",
            [QUEUE_LOCK_SPACE, sorted(set(connection_ids))],
        )


# --- deliveries of changes --------------------------------------------------------------------------------------


def deliveries_insert_for_changes(change_ids: list[int], connection_ids: list[int], shards: int) -> None:
    """PostgreSQL: one INSERT ... SELECT from the saved changes and their audiences' connections (those given, which
    the caller holds the queue locks of): no row passes through Python. Ids follow the ORDER BY, so that a user's
    deliveries keep the order of the user's changes (the IsMember false record of an identity change first). The
    changes are read first, by primary key (MATERIALIZED): joined the other way round, the planner may scan every
    change ever made in the audience."""
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


def deliveries_bulk_create_for_changes(
    changes: Sequence[MembershipChange], connections: dict[int, list[tuple[int, bool]]], shards: int
) -> None:
    """The ORM twin of `deliveries_insert_for_changes`: the same rows, in the same order."""
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


# --- resync pages -----------------------------------------------------------------------------------------------


def deliveries_insert_resync_page(
    connection: Connection, shards: int, now: datetime, *, after: int, through: int
) -> int:
    """One resync delivery per member of the connection's audience with a membership id in (after, through], in one
    INSERT ... SELECT (PostgreSQL and SQLite alike). Returns how many were queued."""
    with db_connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {Delivery._meta.db_table}
                (connection_id, shard, kind, user_id, is_member, uses_previous_identities, "timestamp", status,
                 attempts, next_attempt_at, last_error, created_at)
            SELECT %s, user_id %% %s, %s, user_id, %s, %s, last_changed_timestamp, %s, 0, %s, '', %s
            FROM {Membership._meta.db_table}
            WHERE audience_id = %s AND is_member = %s AND id > %s AND id <= %s
            ORDER BY id
            """,
            [
                connection.pk, shards, Delivery.Kind.RESYNC, True, False,
                Delivery.Status.PENDING, now, now, connection.audience_id, True, after, through,
            ],
        )  # fmt: skip
        return cursor.rowcount


# --- counters ---------------------------------------------------------------------------------------------------


def delivery_stats_add(
    connection_id: int, hours: list[datetime], increments: dict[str, int], counter_fields: Sequence[str]
) -> None:
    """Add to the counters of these hours, making the rows the first time (PostgreSQL and SQLite alike): one
    statement for both rows."""
    names = list(increments)
    table = DeliveryStats._meta.db_table
    columns = ", ".join(["connection_id", "hour", *counter_fields])
    row = "(" + ", ".join(["%s"] * (2 + len(counter_fields))) + ")"
    additions = ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in names)
    params: list[object] = []
    for hour in hours:
        params += [connection_id, db_connection.ops.adapt_datetimefield_value(hour)]
        params += [increments.get(name, 0) for name in counter_fields]
    with db_connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({columns}) VALUES {', '.join([row] * len(hours))} "
            f"ON CONFLICT (connection_id, hour) DO UPDATE SET {additions}",
            params,
        )


def backlog_count_capped(cap: int) -> RawSQL:
    """A connection's pending deliveries, counted up to `cap`: one correlated, bounded count per row on the
    backlog's partial index."""
    deliveries, connections = Delivery._meta.db_table, Connection._meta.db_table
    return RawSQL(
        f"SELECT COUNT(*) FROM (SELECT 1 FROM {deliveries} pending WHERE pending.connection_id = {connections}.id "
        f"AND pending.status = %s LIMIT %s) capped",
        (Delivery.Status.PENDING.value, cap),
        output_field=IntegerField(),
    )
