"""Hourly delivery counters per connection, and its totals since it was created."""

from __future__ import annotations

from datetime import UTC, datetime

from django.db import models

from .connections import Connection

# Delivery latency (from the change's acceptance to Firehose's answer) is counted in these buckets: the upper bound in
# seconds and the DeliveryStats field that counts the records at or under it (and over the previous bound).
LATENCY_BUCKETS: tuple[tuple[float, str], ...] = (
    (0.1, "latency_le_100ms"),
    (0.25, "latency_le_250ms"),
    (0.5, "latency_le_500ms"),
    (1.0, "latency_le_1s"),
    (2.5, "latency_le_2500ms"),
    (5.0, "latency_le_5s"),
    (10.0, "latency_le_10s"),
    (30.0, "latency_le_30s"),
    (60.0, "latency_le_1m"),
    (300.0, "latency_le_5m"),
    (1800.0, "latency_le_30m"),
    (float("inf"), "latency_over_30m"),
)
# The `hour` of the row that holds a connection's totals since it was created (the Prometheus counters).
ALL_TIME = datetime(1970, 1, 1, tzinfo=UTC)


def _latency_field(bound: float) -> models.PositiveBigIntegerField:
    label = "over 30 minutes" if bound == float("inf") else f"at most {bound:g} s"
    return models.PositiveBigIntegerField(default=0, help_text=f"Records delivered {label} after their change.")


class DeliveryStats(models.Model):
    """A connection's delivery counters for one hour, or since its creation when `hour` is ALL_TIME. Each batch adds
    to both rows in one UPDATE; the connection page's chart and p95 read the last 24 hours, /metrics the totals."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="stats")
    hour = models.DateTimeField()
    delivered = models.PositiveBigIntegerField(default=0, help_text="Records Firehose accepted.")
    failed = models.PositiveBigIntegerField(
        default=0, help_text="Records of failed tries: entries Firehose rejected, and every record of a failed request."
    )
    retried = models.PositiveBigIntegerField(default=0, help_text="Failed records scheduled to be sent again.")
    latency_sum_ms = models.PositiveBigIntegerField(default=0)
    latency_le_100ms = _latency_field(0.1)
    latency_le_250ms = _latency_field(0.25)
    latency_le_500ms = _latency_field(0.5)
    latency_le_1s = _latency_field(1.0)
    latency_le_2500ms = _latency_field(2.5)
    latency_le_5s = _latency_field(5.0)
    latency_le_10s = _latency_field(10.0)
    latency_le_30s = _latency_field(30.0)
    latency_le_1m = _latency_field(60.0)
    latency_le_5m = _latency_field(300.0)
    latency_le_30m = _latency_field(1800.0)
    latency_over_30m = _latency_field(float("inf"))

    class Meta:
        verbose_name_plural = "delivery stats"
        constraints = [models.UniqueConstraint(fields=["connection", "hour"], name="stats_unique_connection_hour")]

    def __str__(self) -> str:
        period = "all time" if self.hour == ALL_TIME else f"{self.hour:%Y-%m-%d %H:00} UTC"
        return f"connection #{self.connection_id}, {period}"
