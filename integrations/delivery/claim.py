"""Claim the next batch from the head of a shard's backlog, and build its records.

A claim is an index range scan after the shard's `claimed_through`. It puts at most one record per user in a batch,
skips what a connection does not send (unchanged forwarded identities, anonymous users), fails records over the
stream's size limit, and holds an audience's deletion record until the other shards have sent what came before it.
"""

from __future__ import annotations

from django.db.models import Case, F, When
from django.utils import timezone

from audiences.identities import IdentitiesField
from audiences.models import Audience

from ..destinations import connection_transport_class
from ..models import Connection, Delivery
from ..records import audience_deleted_record, identities_forwarded, membership_record
from .batch import PENDING_FIELDS, Batch, DrainReport, Pending, is_resync
from .ratelimit import batch_limits
from .settle import deliveries_fail_oversized

_ANONYMOUS = b""


def claim_batch(connection: Connection, shard: int, claimed_through: int, report: DrainReport) -> Batch | None:
    """Build the next batch from the head of the shard's backlog (after `claimed_through`). Returns None when only
    non-sendable rows were settled."""
    max_records, max_bytes = batch_limits(connection)
    rows = (
        Delivery.objects.filter(
            connection=connection, shard=shard, status=Delivery.Status.PENDING, pk__gt=claimed_through
        )
        .order_by("id")
        .annotate(
            # The member's current identities, read for resync records only.
            resync_identities=Case(
                When(kind=Delivery.Kind.RESYNC, then=F("user__identities")), output_field=IdentitiesField(null=True)
            )
        )
        .values_list(*PENDING_FIELDS)[:max_records]
    )
    candidates = [Pending(*row) for row in rows]
    batch = Batch(claimed_through=candidates[-1].pk if candidates else claimed_through)
    if not candidates:
        return batch
    audience = connection.audience
    excluded = connection.excluded_identity_keys
    max_record_bytes = connection_transport_class(connection).limits.record_bytes
    users_in_batch: set[int] = set()
    skipped: list[int] = []
    anonymous_skipped = 0
    too_large: list[Pending] = []
    left_behind: int | None = None  # the first candidate that stays pending
    for delivery in candidates:
        if delivery.user_id is not None and delivery.user_id in users_in_batch:
            left_behind = left_behind or delivery.pk
            continue  # at most one record per user in a batch; this one waits for the next batch
        if delivery.kind == Delivery.Kind.AUDIENCE_DELETED and _queued_before_in_other_shards(connection, delivery):
            left_behind = left_behind or delivery.pk
            batch.waiting_for_other_shards = True
            break
        record = _record_for(delivery, connection, audience, excluded)
        if record is None:
            skipped.append(delivery.pk)
            continue
        if record is _ANONYMOUS:
            skipped.append(delivery.pk)
            anonymous_skipped += 1
            continue
        if len(record) > max_record_bytes:
            too_large.append(delivery)
            continue
        if batch.deliveries and batch.size + len(record) > max_bytes:
            left_behind = left_behind or delivery.pk
            break
        batch.deliveries.append(delivery)
        batch.records.append(record)
        batch.keys.append(delivery.user_external_id or str(connection.audience_id))
        batch.size += len(record)
        if delivery.user_id is not None:
            users_in_batch.add(delivery.user_id)
    if left_behind is not None:
        batch.claimed_through = left_behind - 1
    if skipped:
        _deliveries_skip(connection, candidates, skipped, anonymous_skipped, report)
    if too_large:
        deliveries_fail_oversized(connection, too_large, report)
    if not batch.deliveries and (skipped or too_large):
        return None
    return batch


def _deliveries_skip(
    connection: Connection, candidates: list[Pending], skipped: list[int], anonymous_skipped: int, report: DrainReport
) -> None:
    Delivery.objects.filter(pk__in=skipped).update(status=Delivery.Status.SKIPPED, delivered_at=timezone.now())
    report.skipped += len(skipped)
    skipped_ids = set(skipped)
    resync_skipped = sum(1 for delivery in candidates if delivery.pk in skipped_ids and is_resync(delivery))
    if anonymous_skipped or resync_skipped:
        Connection.objects.filter(pk=connection.pk).update(
            anonymous_skipped_count=F("anonymous_skipped_count") + anonymous_skipped,
            resync_sent=F("resync_sent") + resync_skipped,
        )


def _queued_before_in_other_shards(connection: Connection, delivery: Pending) -> bool:
    return Delivery.objects.filter(connection=connection, status=Delivery.Status.PENDING, pk__lt=delivery.pk).exists()


def _record_for(
    delivery: Pending, connection: Connection, audience: Audience, excluded: frozenset[str]
) -> bytes | None:
    """The record's bytes; None when there is nothing to send; _ANONYMOUS when an anonymous user is not sent."""
    if delivery.kind == Delivery.Kind.AUDIENCE_DELETED:
        return audience_deleted_record(
            timestamp=delivery.timestamp,
            audience_id=connection.audience_id,
            audience_name=audience.name,
            append_newline=connection.append_newline,
        )
    if delivery.kind == Delivery.Kind.RESYNC:
        identities = identities_forwarded(delivery.user_identities, excluded)
    else:
        identities = identities_forwarded(delivery.change_identities, excluded)
        if delivery.change_previous_identities is not None:
            previous = identities_forwarded(delivery.change_previous_identities, excluded)
            if previous == identities:
                return None  # the identities this connection forwards did not change
            if delivery.uses_previous_identities:
                identities = previous
    if not identities and not connection.send_anonymous_users:
        return _ANONYMOUS
    return membership_record(
        timestamp=delivery.timestamp,
        audience_id=connection.audience_id,
        audience_name=audience.name,
        is_member=bool(delivery.is_member),
        identities=identities,
        append_newline=connection.append_newline,
    )
