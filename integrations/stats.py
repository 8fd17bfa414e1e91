"""Delivery counters per connection and hour (DeliveryStats), written by the delivery engine once per batch.

Each write adds to two rows in one upsert: the current hour's and the connection's all-time row (`ALL_TIME`). The
connection page reads the last 24 hourly rows (chart, p95 latency), /metrics the all-time rows (Prometheus counters
and the latency histogram), the admin index the last 24 hours of every connection. None of them reads a delivery.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Sum
from django.utils import timezone

from . import sql
from .models import ALL_TIME, LATENCY_BUCKETS, DeliveryStats

LATENCY_BOUNDS = [bound for bound, _ in LATENCY_BUCKETS]
LATENCY_FIELDS = [name for _, name in LATENCY_BUCKETS]
COUNTER_FIELDS = ["delivered", "failed", "retried", "latency_sum_ms", *LATENCY_FIELDS]


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def stats_record(
    connection_id: int,
    *,
    latencies: Iterable[float] = (),
    failed: int = 0,
    retried: int = 0,
    now: datetime | None = None,
) -> None:
    """Add one batch's outcome: `latencies` in seconds, one per delivered record."""
    increments: dict[str, int] = {}
    delivered = latency_ms = 0
    for latency in latencies:
        latency = max(latency, 0.0)
        name = LATENCY_FIELDS[bisect.bisect_left(LATENCY_BOUNDS, latency)]
        increments[name] = increments.get(name, 0) + 1
        delivered += 1
        latency_ms += round(latency * 1000)
    for name, value in (("delivered", delivered), ("failed", failed), ("retried", retried)):
        if value:
            increments[name] = value
    if latency_ms:
        increments["latency_sum_ms"] = latency_ms
    if not increments:
        return
    hours = [ALL_TIME, hour_of(now or timezone.now())]
    sql.delivery_stats_add(connection_id, hours, increments, COUNTER_FIELDS)


@dataclass
class HourlyPoint:
    hour: datetime
    delivered: int
    failed: int


@dataclass
class ConnectionDay:
    """A connection's last 24 hours, hour by hour (oldest first), with totals and the p95 latency."""

    points: list[HourlyPoint]
    delivered: int
    failed: int
    retried: int
    p95_latency_seconds: float | None


def connection_last_24_hours(connection_id: int, now: datetime | None = None) -> ConnectionDay:
    now = now or timezone.now()
    first_hour = hour_of(now) - timedelta(hours=23)
    rows = {
        row.hour: row
        for row in DeliveryStats.objects.filter(connection_id=connection_id, hour__gte=first_hour).only(
            "hour", *COUNTER_FIELDS
        )
    }
    points = []
    buckets = [0] * len(LATENCY_FIELDS)
    delivered = failed = retried = 0
    for offset in range(24):
        hour = first_hour + timedelta(hours=offset)
        row = rows.get(hour)
        points.append(HourlyPoint(hour, row.delivered if row else 0, row.failed if row else 0))
        if row:
            delivered, failed, retried = delivered + row.delivered, failed + row.failed, retried + row.retried
            for index, name in enumerate(LATENCY_FIELDS):
                buckets[index] += getattr(row, name)
    return ConnectionDay(points, delivered, failed, retried, latency_quantile(buckets, 0.95))


def latency_quantile(buckets: list[int], quantile: float) -> float | None:
    """The quantile of a latency histogram (counts per LATENCY_BUCKETS), interpolated inside its bucket as
    Prometheus' histogram_quantile does; the open last bucket answers with its lower bound."""
    total = sum(buckets)
    if not total:
        return None
    rank = quantile * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            lower = LATENCY_BOUNDS[index - 1] if index else 0.0
            upper = LATENCY_BOUNDS[index]
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return LATENCY_BOUNDS[-2]


def deliveries_last_24_hours(now: datetime | None = None) -> dict[str, int]:
    """Delivered, failed and retried records of every connection in the last 24 hours (24 rows per connection)."""
    first_hour = hour_of(now or timezone.now()) - timedelta(hours=23)
    totals = DeliveryStats.objects.filter(hour__gte=first_hour).aggregate(
        delivered=Sum("delivered"), failed=Sum("failed"), retried=Sum("retried")
    )
    return {name: value or 0 for name, value in totals.items()}
