"""A running resync is queued a page at a time, by the drains, as they run out of other work: one INSERT ... SELECT of
the next RESYNC_PAGE_SIZE members, across all shards, in its own short transaction."""

from __future__ import annotations

from django.db.models import F
from django.utils import timezone

from audiences.models import Membership
from project.transactions import atomic_with_retry

from .. import sql
from ..kicks import connection_kick
from ..models import Connection
from ..outbox import deliveries_insert_lock

RESYNC_PAGE_SIZE = 5000


def resync_page_queue(connection: Connection) -> bool:
    """Queue the next page of the running resync as deliveries. Returns False when the resync has finished."""
    queued = _resync_page_insert(connection)
    if queued:
        connection_kick(connection.pk)  # the page spans every shard
    return queued


@atomic_with_retry
def _resync_page_insert(connection: Connection) -> bool:
    # The connection row first, then its queue lock (project.transactions, steps 2 and 5), as a deletion of the
    # audience takes them: drains of other shards wait, and queue each page once.
    cursor_at, until = (
        Connection.objects.select_for_update(no_key=True)
        .filter(pk=connection.pk)
        .values_list("resync_cursor", "resync_until")
        .first()
    ) or (None, None)
    if cursor_at is None:
        return False  # finished, or cancelled by the audience's deletion or the connection's
    members = Membership.objects.filter(
        audience_id=connection.audience_id, is_member=True, pk__gt=cursor_at, pk__lte=until or 0
    ).order_by("pk")
    page_end = members.values_list("pk", flat=True)[RESYNC_PAGE_SIZE - 1 : RESYNC_PAGE_SIZE].first()
    page_end = (until or 0) if page_end is None else page_end
    now = timezone.now()
    shards = deliveries_insert_lock([connection.pk])
    queued = sql.deliveries_insert_resync_page(connection, shards, now, after=cursor_at, through=page_end)
    if not queued:
        Connection.objects.filter(pk=connection.pk).update(resync_cursor=None)
        return False
    finished = page_end >= (until or 0)
    Connection.objects.filter(pk=connection.pk).update(
        resync_cursor=None if finished else page_end, resync_queued=F("resync_queued") + queued
    )
    return True
