"""The delivery engine: drain a connection's backlog to Firehose in batches, in order, and record every outcome.

A connection's backlog is split into shards by user (`Delivery.shard` = user_id % DeliveryLayout.shards). One
drain runs per shard at a time (a `DrainLease`, which expires if its worker dies), so several workers, on several
machines, deliver one connection in parallel. A drain claims its shard's pending deliveries in id order, puts at most
one record per user in a batch, and sends its batches one after another, so each user's records arrive in the order
of that user's changes. Failed entries stay pending and are the first to be claimed again; failed requests set
`Connection.next_attempt_at` with exponential backoff, and the beat sweep resumes the drains when it is due.

Every batch first takes its place under the connection's rate limit (records/s and bytes/s, the region's quota
unless set lower), scaled by `Connection.send_rate`: halved when Firehose throttles, raised a step per accepted
batch (AIMD), so that the producer avoids throttling instead of only retrying it.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db import connection as db_connection
from django.db.models import Case, DateTimeField, ExpressionWrapper, F, Q, TextField, Value, When
from django.db.models.functions import Coalesce, Greatest, Least
from django.utils import timezone

from audiences.identities import IdentitiesField
from audiences.models import Audience, Membership
from project.transactions import atomic_with_retry

from . import firehose
from .alerts import alert_raise, alerts_resolve_on_delivery
from .layout import delivery_shard_count, delivery_shards_changing
from .models import Connection, Delivery, DeliveryAttempt, DeliveryFailure, DrainLease
from .records import audience_deleted_record, identities_forwarded, membership_record
from .services import KICK_LOST_AFTER_SECONDS, connection_credentials, connection_kick, deliveries_insert_lock
from .stats import stats_record

logger = logging.getLogger(__name__)

# A resync queues its members this many at a time, in one INSERT ... SELECT, across all shards.
RESYNC_PAGE_SIZE = 5000

# AIMD on Connection.send_rate, the share of the rate limits in use.
SEND_RATE_DECREASE = 0.5  # multiplied in when Firehose throttles
SEND_RATE_INCREASE = 0.02  # added per batch accepted in full, up to 1
SEND_RATE_FLOOR = 0.01
SEND_RATE_DECREASE_INTERVAL = timedelta(seconds=1)
# Unused sending time carried over to the next batches, at most: allows a short burst after a quiet spell.
SEND_BURST_SECONDS = 1.0
# A drain waits this long at most for its place under the rate limit, even past its time budget; a longer wait
# (never longer than a quarter of the lease) gives the shard back until then (`DrainLease.not_before`).
SEND_WAIT_SECONDS = 1.0


def backoff_seconds(failures: int) -> float:
    """Exponential backoff with jitter: between half and all of min(cap, base * 2**(failures-1))."""
    ceiling = min(
        settings.FIREHOSE_BACKOFF_CAP_SECONDS, settings.FIREHOSE_BACKOFF_BASE_SECONDS * 2 ** max(0, failures - 1)
    )
    return ceiling / 2 + random.uniform(0, ceiling / 2)


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
)


@dataclass
class Batch:
    deliveries: list[Pending] = field(default_factory=list)
    records: list[bytes] = field(default_factory=list)
    size: int = 0
    # Where the shard's next claim starts once this batch is delivered: every pending delivery of the shard up to
    # this id is in the batch.
    claimed_through: int = 0
    # The audience's deletion record waits for the other shards to send what was queued before it.
    waiting_for_other_shards: bool = False


# --- lease ------------------------------------------------------------------------------------------------------


def _lease_acquire(connection_id: int, shard: int) -> tuple[str, int] | None:
    """Take the shard's lease; returns the token and the shard's `claimed_through`, or None when it is taken, the
    shard waits for the rate limit (`not_before`), or the shards are being changed."""
    if delivery_shards_changing():
        return None
    now = timezone.now()
    token = secrets.token_hex(8)
    expires = now + timedelta(seconds=settings.DRAIN_LEASE_SECONDS)
    leases = DrainLease.objects.filter(connection_id=connection_id, shard=shard)
    free = (Q(expires_at__isnull=True) | Q(expires_at__lt=now)) & (Q(not_before__isnull=True) | Q(not_before__lte=now))
    if leases.filter(free).update(token=token, expires_at=expires, not_before=None):
        return token, leases.values_list("claimed_through", flat=True).get()
    if leases.exists():
        return None
    try:
        with transaction.atomic():
            DrainLease.objects.create(connection_id=connection_id, shard=shard, token=token, expires_at=expires)
    except IntegrityError:
        return None  # another drain created it first, or the connection is gone
    return token, 0


def _lease_renew(connection_id: int, shard: int, token: str, claimed_through: int) -> bool:
    """Extend the lease; False when it was taken over (or released by Retry failed), or the shards are changing."""
    if delivery_shards_changing():
        return False
    expires = timezone.now() + timedelta(seconds=settings.DRAIN_LEASE_SECONDS)
    leases = DrainLease.objects.filter(connection_id=connection_id, shard=shard, token=token)
    return bool(leases.update(expires_at=expires, claimed_through=claimed_through))


def _lease_release(
    connection_id: int, shard: int, token: str, claimed_through: int, not_before: datetime | None = None
) -> None:
    DrainLease.objects.filter(connection_id=connection_id, shard=shard, token=token).update(
        token="", expires_at=None, claimed_through=claimed_through, not_before=not_before
    )


# --- drain ------------------------------------------------------------------------------------------------------


def connection_drain(connection_id: int, shard: int = 0, *, time_budget: float | None = None) -> DrainReport:
    """Send what is due on one shard of a connection, for at most `time_budget` seconds: claim a batch, take its
    place under the rate limit, send it, record the outcome; again, renewing the lease as it goes."""
    report = DrainReport()
    lease = _lease_acquire(connection_id, shard)
    if lease is None:
        report.leased = False
        return report
    token, claimed_through = lease
    deadline = time.monotonic() + (settings.DRAIN_TIME_BUDGET_SECONDS if time_budget is None else time_budget)
    renewed = time.monotonic()
    waiting = False
    try:
        connection = _connection_for_drain(connection_id)
        while connection is not None:
            if not _is_sendable(connection, timezone.now()):
                break
            if time.monotonic() >= deadline:
                report.more_work = True
                break
            batch = _claim_batch(connection, shard, claimed_through, report)
            if batch is None:
                continue  # only skipped or oversized deliveries were claimed: claim again
            waiting = batch.waiting_for_other_shards
            if not batch.deliveries:
                if not waiting and connection.resync_running and _queue_resync_page(connection):
                    continue
                break
            # Take the batch's place under the rate limit, and re-read the connection: paused, faulted or backed
            # off by another shard meanwhile means the batch stays pending.
            slot = _reserve_send_slot(connection, batch)
            connection = slot.connection
            if not _is_sendable(connection, timezone.now()):
                _send_slot_give_back(connection, slot.cost)
                break
            if slot.wait > _longest_wait(deadline):
                # Never sleep through the lease: the place goes back, and the shard waits in the database.
                _send_slot_give_back(connection, slot.cost)
                report.parked_until = timezone.now() + timedelta(seconds=slot.wait)
                break
            if slot.wait > 0:
                time.sleep(slot.wait)
            if time.monotonic() - renewed > settings.DRAIN_LEASE_SECONDS / 4:
                if not _lease_renew(connection_id, shard, token, claimed_through):
                    logger.warning("Lost the lease on shard %s of connection %s; stopping.", shard, connection_id)
                    break
                renewed = time.monotonic()
            if _send_batch(connection, batch, report):
                claimed_through = batch.claimed_through
            # else: the failed entries stay pending after `claimed_through`, the first to be claimed again
            report.batches += 1
            if waiting:
                break
    finally:
        _lease_release(connection_id, shard, token, claimed_through, report.parked_until)
    if not report.more_work and not waiting and report.parked_until is None:
        # A change committed between the last empty claim and the release found the lease taken: look once more.
        report.more_work = connection_has_due_work(connection_id, shard, claimed_through)
    return report


def _longest_wait(deadline: float) -> float:
    return min(settings.DRAIN_LEASE_SECONDS / 4, max(deadline - time.monotonic(), SEND_WAIT_SECONDS))


def connection_has_due_work(connection_id: int, shard: int, claimed_through: int) -> bool:
    connection = Connection.objects.filter(pk=connection_id).only(*_DUE_WORK_FIELDS).first()
    if connection is None:
        return False
    lease = DrainLease.objects.filter(connection_id=connection_id, shard=shard).values_list("not_before").first()
    if lease and lease[0] and lease[0] > timezone.now():
        return False
    return _shard_has_due_work(connection, shard, claimed_through, timezone.now())


_DUE_WORK_FIELDS = ("status", "next_attempt_at", "resync_cursor")


def _shard_has_due_work(connection: Connection, shard: int, claimed_through: int, now: datetime) -> bool:
    if not _is_sendable(connection, now):
        return False
    if connection.resync_running:
        return True
    pending = Delivery.objects.filter(
        connection_id=connection.pk, shard=shard, status=Delivery.Status.PENDING, pk__gt=claimed_through
    )
    return pending.exists()


def _is_sendable(connection: Connection, now: datetime) -> bool:
    if connection.status != Connection.Status.ACTIVE:
        return False
    return connection.next_attempt_at is None or connection.next_attempt_at <= now


def _batch_limits(connection: Connection) -> tuple[int, int]:
    """Records and bytes per batch: Firehose's limits, and no more than about a second's worth of the rate limit."""
    rate = max(connection.send_rate, SEND_RATE_FLOOR)
    records = max(1, min(firehose.MAX_BATCH_RECORDS, int(connection.records_per_second_limit * rate)))
    size = max(1, min(firehose.MAX_BATCH_BYTES, int(connection.bytes_per_second_limit * rate)))
    return records, size


def _claim_batch(connection: Connection, shard: int, claimed_through: int, report: DrainReport) -> Batch | None:
    """Build the next batch from the head of the shard's backlog (after `claimed_through`). Returns None when only
    non-sendable rows were settled."""
    max_records, max_bytes = _batch_limits(connection)
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
        if len(record) > firehose.MAX_RECORD_BYTES:
            too_large.append(delivery)
            continue
        if batch.deliveries and batch.size + len(record) > max_bytes:
            left_behind = left_behind or delivery.pk
            break
        batch.deliveries.append(delivery)
        batch.records.append(record)
        batch.size += len(record)
        if delivery.user_id is not None:
            users_in_batch.add(delivery.user_id)
    if left_behind is not None:
        batch.claimed_through = left_behind - 1
    if skipped:
        Delivery.objects.filter(pk__in=skipped).update(status=Delivery.Status.SKIPPED, delivered_at=timezone.now())
        report.skipped += len(skipped)
        skipped_ids = set(skipped)
        resync_skipped = sum(1 for delivery in candidates if delivery.pk in skipped_ids and _is_resync(delivery))
        if anonymous_skipped or resync_skipped:
            Connection.objects.filter(pk=connection.pk).update(
                anonymous_skipped_count=F("anonymous_skipped_count") + anonymous_skipped,
                resync_sent=F("resync_sent") + resync_skipped,
            )
    if too_large:
        _fail_oversized(connection, too_large, report)
    if not batch.deliveries and (skipped or too_large):
        return None
    return batch


def _queued_before_in_other_shards(connection: Connection, delivery: Pending) -> bool:
    return Delivery.objects.filter(connection=connection, status=Delivery.Status.PENDING, pk__lt=delivery.pk).exists()


_ANONYMOUS = b""


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


def _is_resync(delivery: Pending) -> bool:
    return delivery.kind == Delivery.Kind.RESYNC


def _fail_oversized(connection: Connection, deliveries: list[Pending], report: DrainReport) -> None:
    message = f"{len(deliveries)} record(s) over the 1,000 KiB Firehose limit were not sent."
    Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).update(status=Delivery.Status.FAILED, last_error=message)
    Connection.objects.filter(pk=connection.pk).update(
        failed_count=F("failed_count") + len(deliveries),
        resync_sent=F("resync_sent") + sum(1 for delivery in deliveries if _is_resync(delivery)),
        last_error=message,
        last_error_at=timezone.now(),
    )
    alert_raise(connection=connection, type=firehose.ALERT_RECORD_TOO_LARGE, message=message)
    report.failed += len(deliveries)


def _queue_resync_page(connection: Connection) -> bool:
    """Queue the next page of the running resync as deliveries, in one INSERT ... SELECT. Returns False when the
    resync has finished."""
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
                Delivery.Status.PENDING, now, now, connection.audience_id, True, cursor_at, page_end,
            ],
        )  # fmt: skip
        queued = cursor.rowcount
    if not queued:
        Connection.objects.filter(pk=connection.pk).update(resync_cursor=None)
        return False
    finished = page_end >= (until or 0)
    Connection.objects.filter(pk=connection.pk).update(
        resync_cursor=None if finished else page_end, resync_queued=F("resync_queued") + queued
    )
    return True


# --- rate limit ---------------------------------------------------------------------------------------------------


def _connection_for_drain(connection_id: int) -> Connection | None:
    """The connection with what a drain reads of it; None once it was deleted."""
    return Connection.objects.select_related("configuration", "audience").filter(pk=connection_id).first()


class Slot(NamedTuple):
    connection: Connection  # as it is now
    wait: float  # seconds to wait before sending
    cost: timedelta  # the batch's share of the rate limit


def _reserve_send_slot(connection: Connection, batch: Batch) -> Slot:
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
    now_connection = _connection_for_drain(connection.pk)
    if now_connection is None:  # deleted meanwhile
        connection.status = Connection.Status.PAUSED
        return Slot(connection, 0.0, cost)
    if now_connection.send_slot_at is None:  # reset by a Resume or new rate settings meanwhile: go now
        return Slot(now_connection, 0.0, timedelta(0))
    wait = (now_connection.send_slot_at - cost - timezone.now()).total_seconds()
    return Slot(now_connection, wait, cost)


def _send_slot_give_back(connection: Connection, cost: timedelta) -> None:
    """A batch that does not go now gives its place back: the slots taken by other shards since stay valid (their
    waits only come out longer than needed)."""
    Connection.objects.filter(pk=connection.pk, send_slot_at__isnull=False).update(
        send_slot_at=ExpressionWrapper(F("send_slot_at") - Value(cost), output_field=DateTimeField())
    )


# --- send and record --------------------------------------------------------------------------------------------


def _send_batch(connection: Connection, batch: Batch, report: DrainReport) -> bool:
    """Send one batch and record the outcome. Returns True when Firehose accepted every record."""
    try:
        credentials = connection_credentials(connection)
    except firehose.FirehoseError as error:  # a secret that no key decrypts: no request can be signed
        attempt = _attempt(connection, "PutRecordBatch", batch, timezone.now(), time.monotonic(), error=error)
        _request_failed(connection, batch.deliveries, attempt, error, report, sample=batch.records[0])
        return False
    if connection.batch_permitted:
        started, clock = timezone.now(), time.monotonic()
        try:
            failures = firehose.put_record_batch(credentials, connection.stream_name, batch.records)
        except firehose.FirehoseError as error:
            attempt = _attempt(connection, "PutRecordBatch", batch, started, clock, error=error)
            if error.is_access_denied:
                return _send_one_by_one(connection, batch, report, credentials, batch_denied=error)
            _request_failed(connection, batch.deliveries, attempt, error, report, sample=batch.records[0])
            return False
        _with_database_retry(_record_accepted, connection, "PutRecordBatch", batch, started, clock, failures, report)
        return not failures
    return _send_one_by_one(connection, batch, report, credentials)


def _send_one_by_one(
    connection: Connection,
    batch: Batch,
    report: DrainReport,
    credentials: firehose.Credentials,
    batch_denied: firehose.FirehoseError | None = None,
) -> bool:
    """PutRecord per record, for credentials allowed PutRecord but not PutRecordBatch (the seed's IAM policy)."""
    for position, (delivery, record) in enumerate(zip(batch.deliveries, batch.records, strict=True)):
        single = Batch([delivery], [record], len(record))
        started, clock = timezone.now(), time.monotonic()
        try:
            firehose.put_record(credentials, connection.stream_name, record)
        except firehose.FirehoseError as error:
            attempt = _attempt(connection, "PutRecord", single, started, clock, error=error)
            _request_failed(connection, batch.deliveries[position:], attempt, error, report, sample=record)
            return False
        _with_database_retry(_record_accepted, connection, "PutRecord", single, started, clock, [], report)
        if batch_denied is not None:
            Connection.objects.filter(pk=connection.pk).update(batch_permitted=False)
            alert_raise(
                connection=connection,
                type=firehose.ALERT_BATCH_NOT_PERMITTED,
                message="PutRecordBatch was denied, so records are sent one by one with PutRecord. "
                "Add firehose:PutRecordBatch to the IAM policy to send up to 500 records per request. "
                f"({batch_denied.code})",
            )
            batch_denied = None
    return True


def _record_accepted(
    connection: Connection,
    operation: str,
    batch: Batch,
    started: datetime,
    clock: float,
    failures: list[firehose.EntryFailure],
    report: DrainReport,
) -> None:
    attempt = _attempt(connection, operation, batch, started, clock, failures=failures)
    _settle(connection, batch, attempt, failures, report)


def _with_database_retry(write: Callable[..., None], *args: object) -> None:
    """Record what Firehose accepted even through a database restart: giving up here would resend the records."""
    deadline = time.monotonic() + settings.DELIVERY_RECORD_RETRY_SECONDS
    while True:
        try:
            return write(*args)
        except (OperationalError, InterfaceError):
            if time.monotonic() > deadline:
                raise
            logger.warning("The database is unavailable; retrying to record a delivered batch.")
            db_connection.close()
            time.sleep(0.5)


def _attempt(
    connection: Connection,
    operation: str,
    batch: Batch,
    started: datetime,
    clock: float,
    *,
    failures: list[firehose.EntryFailure] | None = None,
    error: firehose.FirehoseError | None = None,
) -> DeliveryAttempt:
    if error is not None:
        outcome = DeliveryAttempt.Outcome.RETRYABLE if error.retryable else DeliveryAttempt.Outcome.PERMANENT
        code, message, failed = error.code, error.message, len(batch.deliveries)
    elif failures:
        outcome = DeliveryAttempt.Outcome.PARTIAL
        code, message, failed = failures[0].code, failures[0].message, len(failures)
    else:
        outcome, code, message, failed = DeliveryAttempt.Outcome.DELIVERED, "", "", 0
    return DeliveryAttempt.objects.create(
        connection=connection,
        operation=operation,
        records=len(batch.deliveries),
        failed_records=failed,
        bytes=batch.size,
        outcome=outcome,
        error_code=code,
        error_message=message,
        started_at=started,
        duration_ms=firehose.monotonic_ms(clock),
    )


def _settle(
    connection: Connection,
    batch: Batch,
    attempt: DeliveryAttempt,
    failures: list[firehose.EntryFailure],
    report: DrainReport,
) -> None:
    """Record a request that Firehose answered: delivered entries are done, failed entries stay pending."""
    now = timezone.now()
    deliveries = batch.deliveries
    failed_ids = {deliveries[failure.index].pk for failure in failures}
    delivered = [delivery for delivery in deliveries if delivery.pk not in failed_ids]
    delivered_ids = [delivery.pk for delivery in delivered]
    # No savepoint: the drain never runs inside another transaction, and a failure here is retried whole.
    with transaction.atomic(savepoint=False):
        if delivered_ids:
            Delivery.objects.filter(pk__any=delivered_ids).update(
                status=Delivery.Status.DELIVERED,
                delivered_at=now,
                attempts=F("attempts") + 1,
                last_attempt=attempt,
                last_error="",
            )
        updates: dict = {"delivered_count": F("delivered_count") + len(delivered_ids)}
        if delivered_ids:
            updates.update(last_delivered_at=now, consecutive_failures=0, next_attempt_at=None)
            resync_sent = sum(1 for delivery in delivered if _is_resync(delivery))
            if resync_sent:
                updates.update(resync_sent=F("resync_sent") + resync_sent)
        throttled = any(failure.code == firehose.THROTTLED for failure in failures)
        if throttled:
            updates.update(_send_rate_decreased(now))
        elif delivered_ids and connection.send_rate < 1:  # entries failing for other reasons are not congestion
            updates.update(send_rate=Least(F("send_rate") + SEND_RATE_INCREASE, 1.0))
        failures_now = 0 if delivered_ids or not failures else _failures_so_far(connection) + 1
        if failures:
            first = failures[0]
            error = f"{first.code}: {first.message}"
            # Entries that failed alongside delivered ones are resent at once, unless Firehose asked to slow down;
            # a batch with nothing delivered backs off like a failed request.
            backoff = throttled or not delivered_ids
            retry_at = now + timedelta(seconds=backoff_seconds(max(1, failures_now))) if backoff else now
            Delivery.objects.filter(pk__in=failed_ids).update(
                attempts=F("attempts") + 1, last_attempt=attempt, last_error=error, next_attempt_at=retry_at
            )
            _failures_record(attempt, {deliveries[f.index].pk: f"{f.code}: {f.message}" for f in failures})
            updates.update(
                last_error=_unless_faulted(f"{len(failures)} of {len(deliveries)} records failed: {error}"),
                last_error_at=now,
            )
            if not delivered_ids:
                updates.update(consecutive_failures=failures_now, next_attempt_at=retry_at)
            elif throttled:
                updates.update(next_attempt_at=retry_at)
        Connection.objects.filter(pk=connection.pk).update(**updates)
        gives_up = failures_now > settings.FIREHOSE_RETRY_LIMIT
        stats_record(
            connection.pk,
            latencies=[(now - delivery.created_at).total_seconds() for delivery in delivered],
            failed=len(failures),
            retried=0 if gives_up else len(failures),
            now=now,
        )
    report.delivered += len(delivered_ids)
    # A batch delivered in full after an error (as the connection read before it says): the alerts about reaching the
    # stream resolve themselves.
    if delivered_ids and not failures and connection.last_error_at:
        if connection.last_delivered_at is None or connection.last_error_at >= connection.last_delivered_at:
            alerts_resolve_on_delivery(connection_id=connection.pk)
    if failures:
        alert_raise(
            connection=connection,
            type=firehose.ALERT_INTERNAL_SERVER_ERROR,
            message=f"{len(failures)} of {len(deliveries)} records failed: {failures[0].code}: {failures[0].message}",
            sample=batch.records[failures[0].index],
        )
        if gives_up:
            _fault(
                connection,
                firehose.ALERT_RETRY_LIMIT_EXCEEDED,
                _retry_limit_message(failures[0].code),
                sample=batch.records[failures[0].index],
            )


def _failures_record(attempt: DeliveryAttempt, errors: dict[int, str]) -> None:
    """Failed tries are kept per delivery (the delivery log shows them); delivered ones only as `last_attempt`."""
    DeliveryFailure.objects.bulk_create(
        [DeliveryFailure(delivery_id=pk, attempt=attempt, error=error[:1000]) for pk, error in errors.items()]
    )


def _request_failed(
    connection: Connection,
    deliveries: list[Pending],
    attempt: DeliveryAttempt,
    error: firehose.FirehoseError,
    report: DrainReport,
    *,
    sample: bytes,
) -> None:
    """Record a request that failed as a whole: retry later with backoff, or fault the connection."""
    now = timezone.now()
    gives_up = not error.retryable
    with transaction.atomic():
        failures = _failures_so_far(connection) + 1
        retry_at = now + timedelta(seconds=backoff_seconds(failures))
        gives_up = gives_up or failures > settings.FIREHOSE_RETRY_LIMIT
        Delivery.objects.filter(pk__in=[delivery.pk for delivery in deliveries]).update(
            attempts=F("attempts") + 1, last_attempt=attempt, last_error=str(error), next_attempt_at=retry_at
        )
        _failures_record(attempt, dict.fromkeys((delivery.pk for delivery in deliveries), str(error)))
        Connection.objects.filter(pk=connection.pk).update(
            consecutive_failures=failures,
            next_attempt_at=retry_at,
            last_error=_unless_faulted(str(error)),
            last_error_at=now,
            **(_send_rate_decreased(now) if error.is_throttled else {}),
        )
        stats_record(connection.pk, failed=len(deliveries), retried=0 if gives_up else len(deliveries), now=now)
    if error.alert and error.retryable:
        alert_raise(connection=connection, type=error.alert, message=error.plain_words, sample=sample)
    if not error.retryable:
        _fault(connection, error.alert or firehose.ALERT_INTERNAL_SERVER_ERROR, error.plain_words, sample=sample)
    elif failures > settings.FIREHOSE_RETRY_LIMIT:
        _fault(connection, firehose.ALERT_RETRY_LIMIT_EXCEEDED, _retry_limit_message(error.code), sample=sample)


def _failures_so_far(connection: Connection) -> int:
    """The connection's failures in a row as they are now, locked until the transaction ends: not the drain's copy,
    read before an operator's Resume may have started a fresh budget."""
    row = (
        Connection.all_objects.select_for_update(no_key=True)
        .filter(pk=connection.pk)
        .values_list("consecutive_failures", flat=True)
        .first()
    )
    return row or 0


def _unless_faulted(error: str) -> Case:
    """The new last error, unless the connection is faulted: then the reason it was faulted stays (another shard's
    request in flight at that time fails too, and must not hide it)."""
    return Case(
        When(status=Connection.Status.FAULTED, then=F("last_error")), default=Value(error), output_field=TextField()
    )


def _send_rate_decreased(now: datetime) -> dict[str, Case]:
    """Halve the send rate, at most once per SEND_RATE_DECREASE_INTERVAL: the requests in flight on the other shards
    when Firehose started throttling answer the same congestion, not a new one."""
    due = Q(send_rate_lowered_at__isnull=True) | Q(send_rate_lowered_at__lt=now - SEND_RATE_DECREASE_INTERVAL)
    return {
        "send_rate": Case(
            When(due, then=Greatest(F("send_rate") * SEND_RATE_DECREASE, SEND_RATE_FLOOR)), default=F("send_rate")
        ),
        "send_rate_lowered_at": Case(When(due, then=Value(now)), default=F("send_rate_lowered_at")),
    }


def _retry_limit_message(code: str) -> str:
    return (
        f"Gave up after {settings.FIREHOSE_RETRY_LIMIT} retries ({code}). The backlog is kept: "
        "fix the cause (or ask AWS for a higher limit), then Resume the connection."
    )


def _fault(connection: Connection, alert: str, message: str, *, sample: bytes | None = None) -> None:
    """Fault the connection, once: of several shards failing at the same time, only the first raises the alert."""
    faulted = Connection.objects.filter(pk=connection.pk, status=Connection.Status.ACTIVE).update(
        status=Connection.Status.FAULTED, last_error=message, last_error_at=timezone.now()
    )
    if faulted:
        alert_raise(connection=connection, type=alert, message=message, sample=sample)
        logger.warning("Connection %s faulted: %s", connection.pk, alert)


# --- sweep ------------------------------------------------------------------------------------------------------


_warned_shards: dict[int, bool] = {}


def connections_sweep() -> list[tuple[int, int]]:
    """Kick every shard of an active connection with due work and no live drain, unless a kick already waits for
    it. Recovers lost kicks, scheduled retries and shards parked by the rate limit. Returns the (connection, shard)
    pairs kicked."""
    now = timezone.now()
    leases = {
        (connection_id, shard): (expires_at, claimed_through, not_before)
        for connection_id, shard, expires_at, claimed_through, not_before in DrainLease.objects.filter(
            connection__status=Connection.Status.ACTIVE
        ).values_list("connection_id", "shard", "expires_at", "claimed_through", "not_before")
    }
    shards = delivery_shard_count()
    if shards != settings.DELIVERY_SHARDS and not _warned_shards.get(settings.DELIVERY_SHARDS):
        _warned_shards[settings.DELIVERY_SHARDS] = True
        logger.warning(
            "DELIVERY_SHARDS is %s here but the database splits the backlogs into %s shards: run manage.py migrate "
            "(or manage.py reshard_deliveries) to change it.",
            settings.DELIVERY_SHARDS,
            shards,
        )
    due = []
    for connection in Connection.objects.filter(status=Connection.Status.ACTIVE).only(*_DUE_WORK_FIELDS):
        for shard in range(shards):
            expires_at, claimed_through, not_before = leases.get((connection.pk, shard), (None, 0, None))
            if expires_at is not None and expires_at >= now:
                continue  # a drain is running on it
            if not_before is not None and not_before > now:
                continue  # waiting for its place under the rate limit
            if _shard_has_due_work(connection, shard, claimed_through, now):
                due.append((connection.pk, shard))
    return [
        (connection_id, shard)
        for connection_id, shard in due
        if connection_kick(connection_id, shard, replace_marks_older_than=KICK_LOST_AFTER_SECONDS)
    ]
