"""The outbox: the deliveries of membership changes and audience deletions, written in the transaction that saved
them (a change and its deliveries commit together), then a kick on commit. The drains send them.

`OUTBOX` is what `audiences.services` is handed to write them (`audiences.services.Outbox`): the audiences app
never imports this one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from django.utils import timezone

from audiences.models import Audience, MembershipChange

from . import sql
from .kicks import connections_kick_on_commit
from .layout import delivery_layout_lock_shared
from .models import Connection, Delivery


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
    if sql.is_postgresql():
        sql.deliveries_insert_for_changes([change.pk for change in changes], connection_ids, shards)
    else:
        sql.deliveries_bulk_create_for_changes(changes, connections, shards)
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
    sql.queue_locks_take(sorted(set(connection_ids)))
    return shards


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


class _Outbox:
    """The outbox as `audiences.services` sees it (`audiences.services.Outbox`)."""

    changes_saved = staticmethod(deliveries_create_for_changes)
    audience_deleted = staticmethod(deliveries_create_for_audience_deletion)


OUTBOX = _Outbox()
