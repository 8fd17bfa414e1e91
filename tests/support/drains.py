"""Draining a connection in the test's process, as the workers would."""

from __future__ import annotations

import time

from django.utils import timezone

from integrations.delivery import DrainReport, connection_drain
from integrations.layout import delivery_shard_count
from integrations.models import Connection


def drain(connection: Connection, *, max_wait: float = 30.0) -> DrainReport:
    """Drain every shard of a connection as the workers would, waiting out scheduled retries, until nothing is due
    or it stops."""
    total = DrainReport()
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        started = timezone.now()
        report = DrainReport()
        for shard in reversed(range(delivery_shard_count())):  # shard 0 last: an audience deletion waits there
            shard_report = connection_drain(connection.pk, shard, time_budget=max_wait)
            report.batches += shard_report.batches
            report.more_work |= shard_report.more_work
            total.delivered += shard_report.delivered
            total.skipped += shard_report.skipped
            total.failed += shard_report.failed
        total.batches += report.batches
        connection.refresh_from_db()
        if connection.status != Connection.Status.ACTIVE:
            break
        # A retry due after the round started may have kept it from sending, even if it is due by now.
        if connection.next_attempt_at and connection.next_attempt_at > started:
            time.sleep(max(0.0, (connection.next_attempt_at - timezone.now()).total_seconds()) + 0.01)
            continue
        if not report.more_work and report.batches == 0:
            break
    return total
