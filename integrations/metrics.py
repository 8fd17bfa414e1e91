"""Prometheus metrics per connection (GET /metrics): delivered, failed and retried records, the backlog, open alerts,
the status, and the delivery-latency histogram. Read from the all-time DeliveryStats rows (one per connection), the
connections and the backlog's partial index, at most once per METRICS_CACHE_SECONDS in each process: the counters
live in the database, so every web process answers the same numbers and nothing resets on a restart."""

from __future__ import annotations

from collections.abc import Iterator

from django.conf import settings
from django.db.models import Count
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from project.process_local import Recent

from .models import ALL_TIME, OPEN_ALERTS, Connection, Delivery, DeliveryStats, SystemAlert
from .stats import LATENCY_BOUNDS, LATENCY_FIELDS

LABELS = ["connection", "audience", "stream", "region"]


class ConnectionCollector(Collector):
    def collect(self) -> Iterator:
        connections = list(Connection.objects.select_related("audience").order_by("pk"))
        totals = {row.connection_id: row for row in DeliveryStats.objects.filter(hour=ALL_TIME)}
        backlogs = dict(
            Delivery.objects.filter(status=Delivery.Status.PENDING)
            .values("connection")
            .annotate(count=Count("pk"))
            .values_list("connection", "count")
            .order_by()
        )
        alerts = dict(
            SystemAlert.objects.filter(OPEN_ALERTS)
            .values("connection")
            .annotate(count=Count("pk"))
            .values_list("connection", "count")
            .order_by()
        )
        delivered = CounterMetricFamily("firehose_records_delivered", "Records Firehose accepted.", labels=LABELS)
        failed = CounterMetricFamily(
            "firehose_records_failed",
            "Records of failed tries: entries Firehose rejected and every record of a failed request.",
            labels=LABELS,
        )
        retried = CounterMetricFamily(
            "firehose_records_retried", "Failed records scheduled to be sent again.", labels=LABELS
        )
        backlog = GaugeMetricFamily("firehose_backlog_records", "Records waiting to be sent.", labels=LABELS)
        open_alerts = GaugeMetricFamily("firehose_open_alerts", "Open System Alerts.", labels=LABELS)
        status = GaugeMetricFamily(
            "firehose_connection_status", "1 for the connection's current status.", labels=[*LABELS, "status"]
        )
        latency = HistogramMetricFamily(
            "firehose_delivery_latency_seconds",
            "Seconds from a change's acceptance to Firehose accepting its record.",
            labels=LABELS,
        )
        for connection in connections:
            labels = [str(connection.pk), connection.audience.name, connection.stream_name, connection.region]
            row = totals.get(connection.pk)
            delivered.add_metric(labels, row.delivered if row else 0)
            failed.add_metric(labels, row.failed if row else 0)
            retried.add_metric(labels, row.retried if row else 0)
            backlog.add_metric(labels, backlogs.get(connection.pk, 0))
            open_alerts.add_metric(labels, alerts.get(connection.pk, 0))
            for value in Connection.Status.values:
                status.add_metric([*labels, value], 1 if connection.status == value else 0)
            cumulative, buckets = 0, []
            for bound, name in zip(LATENCY_BOUNDS, LATENCY_FIELDS, strict=True):
                cumulative += getattr(row, name) if row else 0
                buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
            latency.add_metric(labels, buckets, sum_value=(row.latency_sum_ms / 1000) if row else 0)
        yield from (delivered, failed, retried, backlog, open_alerts, status, latency)


def metrics_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ConnectionCollector())
    return registry


_scrape = Recent(lambda: settings.METRICS_CACHE_SECONDS)


def metrics_text() -> bytes:
    """The scrape's text, computed at most once per METRICS_CACHE_SECONDS in each process: however many scrapers
    ask, the backlog's index is counted once in that time."""
    return _scrape.get(lambda: generate_latest(metrics_registry()))
