"""Record what came of a request: delivered entries are done, failed ones stay pending with backoff, and a
connection that keeps failing, or fails for good, is faulted with an alert.

`settle` records a request the stream answered, as a sequence of steps that each do one thing; `request_failed`
records a request that failed as a whole.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, TextField, Value, When
from django.db.models.functions import Least
from django.utils import timezone

from ..alerts import alert_for, alert_raise, alerts_resolve_on_delivery
from ..destinations import connection_transport_class
from ..models import Connection, Delivery, DeliveryAttempt, DeliveryFailure, SystemAlert
from ..stats import stats_record
from ..transport.base import EntryFailure, Reason, TransportError
from .batch import Batch, DrainReport, Pending, is_resync
from .ratelimit import SEND_RATE_INCREASE, send_rate_decreased

logger = logging.getLogger(__name__)


def backoff_seconds(failures: int) -> float:
    """Exponential backoff with jitter: between half and all of min(cap, base * 2**(failures-1))."""
    ceiling = min(
        settings.FIREHOSE_BACKOFF_CAP_SECONDS, settings.FIREHOSE_BACKOFF_BASE_SECONDS * 2 ** max(0, failures - 1)
    )
    return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass
class _Outcome:
    """A request the stream answered, split by entry."""

    batch: Batch
    failures: list[EntryFailure]
    delivered: list[Pending]
    failed_ids: set[int]
    throttled: bool
    now: datetime

    @classmethod
    def of(cls, batch: Batch, failures: list[EntryFailure]) -> _Outcome:
        failed_ids = {batch.deliveries[failure.index].pk for failure in failures}
        return cls(
            batch=batch,
            failures=failures,
            delivered=[delivery for delivery in batch.deliveries if delivery.pk not in failed_ids],
            failed_ids=failed_ids,
            throttled=any(failure.reason == Reason.THROTTLED for failure in failures),
            now=timezone.now(),
        )

    @property
    def delivered_ids(self) -> list[int]:
        return [delivery.pk for delivery in self.delivered]

    @property
    def first_error(self) -> str:
        return f"{self.failures[0].code}: {self.failures[0].message}"

    @property
    def summary(self) -> str:
        return f"{len(self.failures)} of {len(self.batch.deliveries)} records failed: {self.first_error}"


def settle(
    connection: Connection,
    batch: Batch,
    attempt: DeliveryAttempt,
    failures: list[EntryFailure],
    report: DrainReport,
) -> None:
    """Record a request that the stream answered: delivered entries are done, failed entries stay pending."""
    outcome = _Outcome.of(batch, failures)
    # No savepoint: the drain never runs inside another transaction, and a failure here is retried whole.
    with transaction.atomic(savepoint=False):
        _deliveries_mark_delivered(outcome, attempt)
        failures_now = 0 if outcome.delivered or not failures else _failures_so_far(connection) + 1
        retry_at = _retry_at(outcome, failures_now)
        _deliveries_mark_failed(outcome, attempt, retry_at)
        updates = _counters(outcome) | _send_rate(connection, outcome) | _failure_state(outcome, failures_now, retry_at)
        Connection.objects.filter(pk=connection.pk).update(**updates)
        gives_up = failures_now > settings.FIREHOSE_RETRY_LIMIT
        _stats(connection, outcome, gives_up)
    report.delivered += len(outcome.delivered)
    _alerts_resolve(connection, outcome)
    _alerts_raise(connection, outcome, gives_up)


def _deliveries_mark_delivered(outcome: _Outcome, attempt: DeliveryAttempt) -> None:
    if outcome.delivered:
        Delivery.objects.filter(pk__any=outcome.delivered_ids).update(
            status=Delivery.Status.DELIVERED,
            delivered_at=outcome.now,
            attempts=F("attempts") + 1,
            last_attempt=attempt,
            last_error="",
        )


def _retry_at(outcome: _Outcome, failures_now: int) -> datetime:
    """Entries that failed alongside delivered ones are resent at once, unless the stream asked to slow down; a
    batch with nothing delivered backs off like a failed request."""
    if not outcome.failures:
        return outcome.now
    if outcome.throttled or not outcome.delivered:
        return outcome.now + timedelta(seconds=backoff_seconds(max(1, failures_now)))
    return outcome.now


def _deliveries_mark_failed(outcome: _Outcome, attempt: DeliveryAttempt, retry_at: datetime) -> None:
    if not outcome.failures:
        return
    Delivery.objects.filter(pk__in=outcome.failed_ids).update(
        attempts=F("attempts") + 1, last_attempt=attempt, last_error=outcome.first_error, next_attempt_at=retry_at
    )
    deliveries = outcome.batch.deliveries
    failures_record(attempt, {deliveries[f.index].pk: f"{f.code}: {f.message}" for f in outcome.failures})


def _counters(outcome: _Outcome) -> dict[str, Any]:
    updates: dict[str, Any] = {"delivered_count": F("delivered_count") + len(outcome.delivered)}
    if outcome.delivered:
        updates.update(last_delivered_at=outcome.now, consecutive_failures=0, next_attempt_at=None)
        resync_sent = sum(1 for delivery in outcome.delivered if is_resync(delivery))
        if resync_sent:
            updates.update(resync_sent=F("resync_sent") + resync_sent)
    return updates


def _send_rate(connection: Connection, outcome: _Outcome) -> dict[str, Any]:
    """AIMD: throttling halves the share of the limits in use; a batch delivered raises it a step. Entries failing
    for other reasons are not congestion."""
    if outcome.throttled:
        return send_rate_decreased(outcome.now)
    if outcome.delivered and connection.send_rate < 1:
        return {"send_rate": Least(F("send_rate") + SEND_RATE_INCREASE, 1.0)}
    return {}


def _failure_state(outcome: _Outcome, failures_now: int, retry_at: datetime) -> dict[str, Any]:
    if not outcome.failures:
        return {}
    updates: dict[str, Any] = {"last_error": unless_faulted(outcome.summary), "last_error_at": outcome.now}
    if not outcome.delivered:
        updates.update(consecutive_failures=failures_now, next_attempt_at=retry_at)
    elif outcome.throttled:
        updates.update(next_attempt_at=retry_at)
    return updates


def _stats(connection: Connection, outcome: _Outcome, gives_up: bool) -> None:
    stats_record(
        connection.pk,
        latencies=[(outcome.now - delivery.created_at).total_seconds() for delivery in outcome.delivered],
        failed=len(outcome.failures),
        retried=0 if gives_up else len(outcome.failures),
        now=outcome.now,
    )


def _alerts_resolve(connection: Connection, outcome: _Outcome) -> None:
    """A batch delivered in full after an error (as the connection read before it says): the alerts about reaching
    the stream resolve themselves."""
    if outcome.delivered and not outcome.failures and connection.last_error_at:
        if connection.last_delivered_at is None or connection.last_error_at >= connection.last_delivered_at:
            alerts_resolve_on_delivery(connection_id=connection.pk)


def _alerts_raise(connection: Connection, outcome: _Outcome, gives_up: bool) -> None:
    if not outcome.failures:
        return
    first = outcome.failures[0]
    sample = outcome.batch.records[first.index]
    alert = alert_for(first.reason) or SystemAlert.Type.INTERNAL_SERVER_ERROR
    alert_raise(connection=connection, type=alert, message=outcome.summary, sample=sample)
    if gives_up:
        fault(connection, SystemAlert.Type.RETRY_LIMIT_EXCEEDED, _retry_limit_message(first.code), sample=sample)


def failures_record(attempt: DeliveryAttempt, errors: dict[int, str]) -> None:
    """Failed tries are kept per delivery (the delivery log shows them); delivered ones only as `last_attempt`."""
    DeliveryFailure.objects.bulk_create(
        [DeliveryFailure(delivery_id=pk, attempt=attempt, error=error[:1000]) for pk, error in errors.items()]
    )


def request_failed(
    connection: Connection,
    deliveries: list[Pending],
    attempt: DeliveryAttempt,
    error: TransportError,
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
        failures_record(attempt, dict.fromkeys((delivery.pk for delivery in deliveries), str(error)))
        Connection.objects.filter(pk=connection.pk).update(
            consecutive_failures=failures,
            next_attempt_at=retry_at,
            last_error=unless_faulted(str(error)),
            last_error_at=now,
            **(send_rate_decreased(now) if error.is_throttled else {}),
        )
        stats_record(connection.pk, failed=len(deliveries), retried=0 if gives_up else len(deliveries), now=now)
    alert = alert_for(error.reason)
    if alert and error.retryable:
        alert_raise(connection=connection, type=alert, message=error.plain_words, sample=sample)
    if not error.retryable:
        fault(connection, alert or SystemAlert.Type.INTERNAL_SERVER_ERROR, error.plain_words, sample=sample)
    elif failures > settings.FIREHOSE_RETRY_LIMIT:
        fault(connection, SystemAlert.Type.RETRY_LIMIT_EXCEEDED, _retry_limit_message(error.code), sample=sample)


def deliveries_fail_oversized(connection: Connection, deliveries: list[Pending], report: DrainReport) -> None:
    """Records over the stream's size limit can never be sent: they fail for good, with an alert."""
    transport = connection_transport_class(connection)
    limit = f"{transport.limits.record_bytes // 1024:,} KiB {transport.name} limit"
    message = f"{len(deliveries)} record(s) over the {limit} were not sent."
    Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).update(status=Delivery.Status.FAILED, last_error=message)
    Connection.objects.filter(pk=connection.pk).update(
        failed_count=F("failed_count") + len(deliveries),
        resync_sent=F("resync_sent") + sum(1 for delivery in deliveries if is_resync(delivery)),
        last_error=message,
        last_error_at=timezone.now(),
    )
    alert_raise(connection=connection, type=SystemAlert.Type.RECORD_TOO_LARGE, message=message)
    report.failed += len(deliveries)


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


def unless_faulted(error: str) -> Case:
    """The new last error, unless the connection is faulted: then the reason it was faulted stays (another shard's
    request in flight at that time fails too, and must not hide it)."""
    return Case(
        When(status=Connection.Status.FAULTED, then=F("last_error")), default=Value(error), output_field=TextField()
    )


def _retry_limit_message(code: str) -> str:
    return (
        f"Gave up after {settings.FIREHOSE_RETRY_LIMIT} retries ({code}). The backlog is kept: "
        "fix the cause (or ask AWS for a higher limit), then Resume the connection."
    )


def fault(connection: Connection, alert: str, message: str, *, sample: bytes | None = None) -> None:
    """Fault the connection, once: of several shards failing at the same time, only the first raises the alert."""
    faulted = Connection.objects.filter(pk=connection.pk, status=Connection.Status.ACTIVE).update(
        status=Connection.Status.FAULTED, last_error=message, last_error_at=timezone.now()
    )
    if faulted:
        alert_raise(connection=connection, type=alert, message=message, sample=sample)
        logger.warning("Connection %s faulted: %s", connection.pk, alert)
