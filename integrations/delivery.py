"""The delivery engine: drain a connection's backlog to Firehose in batches, in order, and record every outcome.

One drain runs per connection at a time (a lease on the connection row, which expires if its worker dies).
It claims pending deliveries in id order, puts at most one record per user in a batch, and sends the batches one
after another, so each user's records arrive in the order of that user's changes. Failed entries stay pending and
are the first to be claimed again; failed requests set `Connection.next_attempt_at` with exponential backoff, and
the beat sweep resumes the drain when it is due.
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
from django.db import InterfaceError, OperationalError, transaction
from django.db import connection as db_connection
from django.db.models import F, Q
from django.utils import timezone

from audiences.models import Audience, Membership

from . import firehose
from .alerts import alert_raise
from .models import Connection, Delivery, DeliveryAttempt
from .records import audience_deleted_record, identities_forwarded, membership_record
from .services import connection_credentials, connection_kick

logger = logging.getLogger(__name__)

RESYNC_PAGE_SIZE = firehose.MAX_BATCH_RECORDS


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


PENDING_FIELDS = (
    "pk",
    "kind",
    "user_id",
    "is_member",
    "uses_previous_identities",
    "timestamp",
    "change__identities",
    "change__previous_identities",
    "user__identities",
)


@dataclass
class Batch:
    deliveries: list[Pending] = field(default_factory=list)
    records: list[bytes] = field(default_factory=list)
    size: int = 0


# --- lease ------------------------------------------------------------------------------------------------------


def _lease_acquire(connection_id: int) -> str | None:
    now = timezone.now()
    token = secrets.token_hex(8)
    taken = Connection.objects.filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now), pk=connection_id
    ).update(lease_token=token, lease_expires_at=now + timedelta(seconds=settings.DRAIN_LEASE_SECONDS))
    return token if taken else None


def _lease_renew(connection_id: int, token: str) -> bool:
    expires = timezone.now() + timedelta(seconds=settings.DRAIN_LEASE_SECONDS)
    return bool(Connection.objects.filter(pk=connection_id, lease_token=token).update(lease_expires_at=expires))


def _lease_release(connection_id: int, token: str) -> None:
    Connection.objects.filter(pk=connection_id, lease_token=token).update(lease_token="", lease_expires_at=None)


# --- drain ------------------------------------------------------------------------------------------------------


def connection_drain(connection_id: int, *, time_budget: float | None = None) -> DrainReport:
    """Send what is due on one connection, for at most `time_budget` seconds."""
    report = DrainReport()
    token = _lease_acquire(connection_id)
    if token is None:
        report.leased = False
        return report
    deadline = time.monotonic() + (settings.DRAIN_TIME_BUDGET_SECONDS if time_budget is None else time_budget)
    renewed = time.monotonic()
    try:
        while True:
            connection = Connection.objects.select_related("configuration", "audience").get(pk=connection_id)
            if not _is_sendable(connection, timezone.now()):
                break
            if time.monotonic() >= deadline:
                report.more_work = True
                break
            batch = _claim_batch(connection, report)
            if batch is None:
                continue  # only skipped or oversized deliveries were claimed: claim again
            if not batch.deliveries:
                if connection.resync_running and _queue_resync_page(connection):
                    continue
                break
            _send_batch(connection, batch, report)
            report.batches += 1
            if time.monotonic() - renewed > settings.DRAIN_LEASE_SECONDS / 4:
                if not _lease_renew(connection_id, token):
                    logger.warning("Lost the lease on connection %s; stopping this drain.", connection_id)
                    token = ""
                    break
                renewed = time.monotonic()
    finally:
        if token:
            _lease_release(connection_id, token)
    if token and not report.more_work:
        # A change committed between the last empty claim and the release found the lease taken: look once more.
        report.more_work = connection_has_due_work(connection_id)
    return report


def connection_has_due_work(connection_id: int) -> bool:
    connection = Connection.objects.filter(pk=connection_id).only("status", "next_attempt_at", "resync_cursor").first()
    if connection is None or not _is_sendable(connection, timezone.now()):
        return False
    pending = Delivery.objects.filter(connection_id=connection_id, status=Delivery.Status.PENDING)
    return connection.resync_running or pending.exists()


def _is_sendable(connection: Connection, now: datetime) -> bool:
    if connection.status != Connection.Status.ACTIVE:
        return False
    return connection.next_attempt_at is None or connection.next_attempt_at <= now


def _claim_batch(connection: Connection, report: DrainReport) -> Batch | None:
    """Build the next batch from the head of the backlog. Returns None when only non-sendable rows were settled."""
    candidates = [
        Pending(*row)
        for row in Delivery.objects.filter(connection=connection, status=Delivery.Status.PENDING)
        .order_by("id")
        .values_list(*PENDING_FIELDS)[: firehose.MAX_BATCH_RECORDS]
    ]
    if not candidates:
        return Batch()
    audience = connection.audience
    excluded = connection.excluded_identity_keys
    batch = Batch()
    users_in_batch: set[int] = set()
    skipped: list[int] = []
    anonymous_skipped = 0
    too_large: list[Pending] = []
    for delivery in candidates:
        if delivery.user_id is not None and delivery.user_id in users_in_batch:
            continue  # at most one record per user in a batch; this one waits for the next batch
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
        if batch.size + len(record) > firehose.MAX_BATCH_BYTES:
            break
        batch.deliveries.append(delivery)
        batch.records.append(record)
        batch.size += len(record)
        if delivery.user_id is not None:
            users_in_batch.add(delivery.user_id)
    if skipped:
        Delivery.objects.filter(pk__in=skipped).update(status=Delivery.Status.SKIPPED, delivered_at=timezone.now())
        report.skipped += len(skipped)
        if anonymous_skipped:
            Connection.objects.filter(pk=connection.pk).update(
                anonymous_skipped_count=F("anonymous_skipped_count") + anonymous_skipped
            )
    if too_large:
        _fail_oversized(connection, too_large, report)
    if not batch.deliveries and (skipped or too_large):
        return None
    return batch


_ANONYMOUS = b""


def _record_for(
    delivery: Delivery, connection: Connection, audience: Audience, excluded: frozenset[str]
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


def _fail_oversized(connection: Connection, deliveries: list[Pending], report: DrainReport) -> None:
    message = f"{len(deliveries)} record(s) over the 1,000 KiB Firehose limit were not sent."
    Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).update(status=Delivery.Status.FAILED, last_error=message)
    Connection.objects.filter(pk=connection.pk).update(
        failed_count=F("failed_count") + len(deliveries), last_error=message, last_error_at=timezone.now()
    )
    alert_raise(connection=connection, type=firehose.ALERT_RECORD_TOO_LARGE, message=message)
    report.failed += len(deliveries)


def _queue_resync_page(connection: Connection) -> bool:
    """Queue the next page of the running resync as deliveries. Returns False when the resync has finished."""
    with transaction.atomic():
        members = list(
            Membership.objects.filter(
                audience_id=connection.audience_id,
                is_member=True,
                pk__gt=connection.resync_cursor or 0,
                pk__lte=connection.resync_until or 0,
            )
            .order_by("pk")
            .values_list("pk", "user_id", "last_changed_timestamp")[:RESYNC_PAGE_SIZE]
        )
        if not members:
            Connection.objects.filter(pk=connection.pk).update(resync_cursor=None)
            return False
        now = timezone.now()
        Delivery.objects.bulk_create(
            Delivery(
                connection_id=connection.pk,
                kind=Delivery.Kind.RESYNC,
                user_id=user_id,
                is_member=True,
                timestamp=timestamp,
                next_attempt_at=now,
                created_at=now,
            )
            for _, user_id, timestamp in members
        )
        Connection.objects.filter(pk=connection.pk, resync_cursor__isnull=False).update(
            resync_cursor=members[-1][0], resync_queued=F("resync_queued") + len(members)
        )
    return True


# --- send and record --------------------------------------------------------------------------------------------


def _send_batch(connection: Connection, batch: Batch, report: DrainReport) -> None:
    credentials = connection_credentials(connection)
    if connection.batch_permitted:
        started, clock = timezone.now(), time.monotonic()
        try:
            failures = firehose.put_record_batch(credentials, connection.stream_name, batch.records)
        except firehose.FirehoseError as error:
            attempt = _attempt(connection, "PutRecordBatch", batch, started, clock, error=error)
            if error.is_access_denied:
                _send_one_by_one(connection, batch, report, credentials, batch_denied=error)
                return
            _request_failed(connection, batch.deliveries, attempt, error, report)
            return
        _with_database_retry(_record_accepted, connection, "PutRecordBatch", batch, started, clock, failures, report)
    else:
        _send_one_by_one(connection, batch, report, credentials)


def _send_one_by_one(
    connection: Connection,
    batch: Batch,
    report: DrainReport,
    credentials: firehose.Credentials,
    batch_denied: firehose.FirehoseError | None = None,
) -> None:
    """PutRecord per record, for credentials allowed PutRecord but not PutRecordBatch (the seed's IAM policy)."""
    for position, (delivery, record) in enumerate(zip(batch.deliveries, batch.records, strict=True)):
        single = Batch([delivery], [record], len(record))
        started, clock = timezone.now(), time.monotonic()
        try:
            firehose.put_record(credentials, connection.stream_name, record)
        except firehose.FirehoseError as error:
            attempt = _attempt(connection, "PutRecord", single, started, clock, error=error)
            _request_failed(connection, batch.deliveries[position:], attempt, error, report)
            return
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
    _settle(connection, batch.deliveries, attempt, failures, report)


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
    deliveries: list[Pending],
    attempt: DeliveryAttempt,
    failures: list[firehose.EntryFailure],
    report: DrainReport,
) -> None:
    """Record a request that Firehose answered: delivered entries are done, failed entries stay pending."""
    now = timezone.now()
    failed_ids = {deliveries[failure.index].pk for failure in failures}
    delivered_ids = [delivery.pk for delivery in deliveries if delivery.pk not in failed_ids]
    with transaction.atomic():
        if delivered_ids:
            Delivery.objects.filter(pk__in=delivered_ids).update(
                status=Delivery.Status.DELIVERED,
                delivered_at=now,
                attempts=F("attempts") + 1,
                last_attempt=attempt,
                last_error="",
            )
        updates: dict = {"delivered_count": F("delivered_count") + len(delivered_ids)}
        if delivered_ids:
            updates.update(last_delivered_at=now, consecutive_failures=0, next_attempt_at=None)
        if failures:
            first = failures[0]
            error = f"{first.code}: {first.message}"
            throttled = any(failure.code == "ServiceUnavailableException" for failure in failures)
            failures_now = 0 if delivered_ids else connection.consecutive_failures + 1
            # Entries that failed alongside delivered ones are resent at once, unless Firehose asked to slow down;
            # a batch with nothing delivered backs off like a failed request.
            backoff = throttled or not delivered_ids
            retry_at = now + timedelta(seconds=backoff_seconds(max(1, failures_now))) if backoff else now
            Delivery.objects.filter(pk__in=failed_ids).update(
                attempts=F("attempts") + 1, last_attempt=attempt, last_error=error, next_attempt_at=retry_at
            )
            updates.update(
                last_error=f"{len(failures)} of {len(deliveries)} records failed: {error}", last_error_at=now
            )
            if not delivered_ids:
                updates.update(consecutive_failures=failures_now, next_attempt_at=retry_at)
            elif throttled:
                updates.update(next_attempt_at=retry_at)
        Connection.objects.filter(pk=connection.pk).update(**updates)
    report.delivered += len(delivered_ids)
    if failures:
        alert_raise(
            connection=connection,
            type=firehose.ALERT_INTERNAL_SERVER_ERROR,
            message=f"{len(failures)} of {len(deliveries)} records failed: {failures[0].code}: {failures[0].message}",
        )
        if not delivered_ids and connection.consecutive_failures + 1 > settings.FIREHOSE_RETRY_LIMIT:
            _fault(connection, firehose.ALERT_RETRY_LIMIT_EXCEEDED, _retry_limit_message(failures[0].code))


def _request_failed(
    connection: Connection,
    deliveries: list[Pending],
    attempt: DeliveryAttempt,
    error: firehose.FirehoseError,
    report: DrainReport,
) -> None:
    """Record a request that failed as a whole: retry later with backoff, or fault the connection."""
    now = timezone.now()
    failures = connection.consecutive_failures + 1
    retry_at = now + timedelta(seconds=backoff_seconds(failures))
    with transaction.atomic():
        Delivery.objects.filter(pk__in=[delivery.pk for delivery in deliveries]).update(
            attempts=F("attempts") + 1, last_attempt=attempt, last_error=str(error), next_attempt_at=retry_at
        )
        Connection.objects.filter(pk=connection.pk).update(
            consecutive_failures=failures, next_attempt_at=retry_at, last_error=str(error), last_error_at=now
        )
    if error.alert and error.retryable:
        alert_raise(connection=connection, type=error.alert, message=error.plain_words)
    if not error.retryable:
        _fault(connection, error.alert or firehose.ALERT_INTERNAL_SERVER_ERROR, error.plain_words)
    elif failures > settings.FIREHOSE_RETRY_LIMIT:
        _fault(connection, firehose.ALERT_RETRY_LIMIT_EXCEEDED, _retry_limit_message(error.code))


def _retry_limit_message(code: str) -> str:
    return (
        f"Gave up after {settings.FIREHOSE_RETRY_LIMIT} retries ({code}). The backlog is kept: "
        "fix the cause (or ask AWS for a higher limit), then Resume the connection."
    )


def _fault(connection: Connection, alert: str, message: str) -> None:
    Connection.objects.filter(pk=connection.pk).update(
        status=Connection.Status.FAULTED, last_error=message, last_error_at=timezone.now()
    )
    alert_raise(connection=connection, type=alert, message=message)
    logger.warning("Connection %s faulted: %s", connection.pk, alert)


# --- sweep ------------------------------------------------------------------------------------------------------


def connections_sweep() -> list[int]:
    """Kick every active connection with due work and no live drain. Recovers lost kicks and scheduled retries."""
    now = timezone.now()
    idle = Connection.objects.filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now), status=Connection.Status.ACTIVE
    ).values_list("pk", flat=True)
    kicked = [connection_id for connection_id in idle if connection_has_due_work(connection_id)]
    for connection_id in kicked:
        connection_kick(connection_id)
    return kicked
