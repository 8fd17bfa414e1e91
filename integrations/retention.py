"""Retention: settled deliveries and old delivery attempts are purged after DELIVERY_RETENTION_DAYS.

Only what is finished goes: delivered and skipped deliveries, and attempts that no remaining delivery points to
(with the failed tries that refer to either), then the hourly counters (delivery stats and alert occurrences) of
hours past the window. Pending and failed deliveries stay until they are resolved, and so do their last attempts;
the all-time counters and the alert rows stay. Membership changes are the append-only log and are never purged here.

A deleted connection's rows all go, in the same kind of batches (`connections_purge_deleted`), then the connection
row itself, once no drain holds one of its leases.

Rows go in small batches, each selected with a LIMIT on an index and deleted by id in its own short transaction,
so the purge never holds a long lock and never runs one unbounded DELETE. A time budget bounds one run, and the task
(integrations.tasks.purge_deliveries) queues another at once when rows were left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from .models import (
    ALL_TIME,
    AlertHourlyCount,
    Connection,
    Delivery,
    DeliveryAttempt,
    DeliveryStats,
    DrainLease,
    SystemAlert,
)

PURGE_BATCH_SIZE = 5000
PURGE_TIME_BUDGET_SECONDS = 60.0

SETTLED = (Delivery.Status.DELIVERED, Delivery.Status.SKIPPED)
UNSETTLED = (Delivery.Status.PENDING, Delivery.Status.FAILED)


@dataclass
class PurgeReport:
    deliveries: int = 0
    attempts: int = 0
    hourly_rows: int = 0
    batches: int = 0
    finished: bool = True  # False when the time budget ran out with rows left to purge


def deliveries_purge(
    *,
    older_than: timedelta,
    batch_size: int = PURGE_BATCH_SIZE,
    time_budget: float = PURGE_TIME_BUDGET_SECONDS,
) -> PurgeReport:
    """Delete deliveries settled more than `older_than` ago, then attempts older than that which nothing needs."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    cutoff = timezone.now() - older_than
    deadline = time.monotonic() + time_budget
    report = PurgeReport()
    # Per connection, so that every batch is a range scan on an index that starts with the connection:
    # (connection, status, created_at) for deliveries and (connection, started_at) for attempts.
    connection_ids = list(Connection.objects.order_by("pk").values_list("pk", flat=True))
    for connection_id in connection_ids:
        for status in SETTLED:
            deliveries = Delivery.objects.filter(connection_id=connection_id, status=status, created_at__lt=cutoff)
            # Settled before the cutoff too: a delivery queued long ago but sent recently is kept for now.
            deliveries = deliveries.filter(Q(delivered_at__lt=cutoff) | Q(delivered_at__isnull=True))
            report.deliveries += _purge(deliveries, "created_at", batch_size, deadline, report)
            if not report.finished:
                return report
    # Attempts after deliveries, so that the attempts of the deliveries just purged are free to go too.
    for connection_id in connection_ids:
        # Only unsettled deliveries can still point to an attempt this old (delivery_unsettled_attempt_idx).
        needed = Delivery.objects.filter(last_attempt=OuterRef("pk"), status__in=UNSETTLED)
        attempts = DeliveryAttempt.objects.filter(connection_id=connection_id, started_at__lt=cutoff).exclude(
            Exists(needed)
        )
        report.attempts += _purge(attempts, "started_at", batch_size, deadline, report)
        if not report.finished:
            return report
    # Hourly counters: the connection page reads 24 hours of them, the System Alerts page 7 days.
    hours_cutoff = min(cutoff, timezone.now() - timedelta(days=7))
    for rows in (
        DeliveryStats.objects.filter(hour__lt=hours_cutoff).exclude(hour=ALL_TIME),
        AlertHourlyCount.objects.filter(hour__lt=hours_cutoff),
    ):
        report.hourly_rows += _purge(rows, "hour", batch_size, deadline, report)
        if not report.finished:
            return report
    return report


def connections_purge_deleted(
    *, batch_size: int = PURGE_BATCH_SIZE, time_budget: float = PURGE_TIME_BUDGET_SECONDS
) -> PurgeReport:
    """Delete the rows of deleted connections, then the connections, in batches; `finished` is False when the time
    budget ran out with rows left. A connection one of whose drains still holds its lease keeps its row until the
    next run (hourly, with the retention purge)."""
    deadline = time.monotonic() + time_budget
    report = PurgeReport()
    deleted = list(Connection.all_objects.filter(deleted_at__isnull=False).order_by("pk").values_list("pk", flat=True))
    for connection_id in deleted:
        for rows, order in (
            *(
                (Delivery.objects.filter(connection_id=connection_id, status=status), "created_at")
                for status in Delivery.Status.values
            ),
            (DeliveryAttempt.objects.filter(connection_id=connection_id), "started_at"),
            (DeliveryStats.objects.filter(connection_id=connection_id), "hour"),
            (SystemAlert.objects.filter(connection_id=connection_id), "last_seen"),
        ):
            purged = _purge(rows, order, batch_size, deadline, report)
            report.deliveries += purged if rows.model is Delivery else 0
            report.attempts += purged if rows.model is DeliveryAttempt else 0
            if not report.finished:
                return report
        # A drain that took its lease before the deletion may still record its last batch: wait for it.
        draining = DrainLease.objects.filter(connection_id=connection_id, expires_at__gt=timezone.now()).exclude(
            token=""
        )
        if draining.exists():
            continue
        Connection.all_objects.filter(pk=connection_id).delete()  # with what a drain recorded meanwhile
    return report


def _purge(rows: QuerySet, order: str, batch_size: int, deadline: float, report: PurgeReport) -> int:
    """Delete `rows` in batches, oldest first; returns how many. Clears `report.finished` when time runs out."""
    model = rows.model
    purged = 0
    after: datetime | None = None
    while True:
        if time.monotonic() >= deadline:
            report.finished = False
            return purged
        batch = rows if after is None else rows.filter(**{f"{order}__gte": after})
        selected = list(batch.order_by(order).values_list("pk", order)[:batch_size])
        if not selected:
            return purged
        # A delivery only ever comes to point to a new attempt, never to one this old: nothing to clear.
        _, deleted = model.objects.filter(pk__in=[pk for pk, _ in selected]).delete()
        purged += deleted.get(model._meta.label, 0)
        report.batches += 1
        if len(selected) < batch_size:
            return purged
        # Go on from the last deleted row: rows before it that the filter keeps are not scanned again.
        after = selected[-1][1]
