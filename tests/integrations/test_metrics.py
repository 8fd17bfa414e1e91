"""Delivery stats and /metrics: the hourly and all-time DeliveryStats rows that every batch adds to, the last 24 hours
read back from them (chart points, totals, p95 latency), and the Prometheus text built from them. Deliveries go
through the real engine to moto; nothing of ours is mocked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection as db_connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from integrations.alerts import alert_raise
from integrations.connections import connection_pause
from integrations.models import (
    ALL_TIME,
    LATENCY_BUCKETS,
    Connection,
    DeliveryAttempt,
    DeliveryStats,
    SystemAlert,
)
from integrations.stats import (
    LATENCY_FIELDS,
    connection_last_24_hours,
    deliveries_last_24_hours,
    hour_of,
    latency_quantile,
)

from ..factories import apply, join, members
from ..support.drains import drain
from ..support.emulator import fail_entries, firehose_behaviour, throttle_first

pytestmark = pytest.mark.django_db


def all_time(connection: Connection) -> DeliveryStats:
    return DeliveryStats.objects.get(connection=connection, hour=ALL_TIME)


def hourly(connection: Connection) -> list[DeliveryStats]:
    return list(DeliveryStats.objects.filter(connection=connection).exclude(hour=ALL_TIME).order_by("hour"))


def latency_total(row: DeliveryStats) -> int:
    return sum(getattr(row, name) for name in LATENCY_FIELDS)


def attempt_hours(connection: Connection) -> set[datetime]:
    return {hour_of(started) for started in DeliveryAttempt.objects.filter(connection=connection).values_list(
        "started_at", flat=True
    )}  # fmt: skip


# --- DeliveryStats written by the engine ----------------------------------------------------------------------------


def test_a_drain_adds_its_records_to_the_all_time_and_the_hourly_row_with_one_latency_each(
    connection, audience, stream
):
    members(audience, 7)

    drain(connection)

    assert len(stream.records()) == 7
    total = all_time(connection)
    assert (total.delivered, total.failed, total.retried) == (7, 0, 0)
    assert latency_total(total) == 7
    hours = hourly(connection)
    assert sum(row.delivered for row in hours) == 7
    assert sum(latency_total(row) for row in hours) == 7
    assert {row.hour for row in hours} <= attempt_hours(connection)  # the hour the batch was settled in
    assert total.latency_sum_ms == sum(row.latency_sum_ms for row in hours)


def test_the_rows_keep_adding_up_across_drains(connection, audience, stream):
    members(audience, 3)
    drain(connection)
    members(audience, 2, prefix="later")
    drain(connection)

    assert all_time(connection).delivered == 5
    assert sum(row.delivered for row in hourly(connection)) == 5
    assert DeliveryStats.objects.filter(connection=connection, hour=ALL_TIME).count() == 1


def test_entries_that_fail_are_counted_as_failed_and_retried(connection, audience, stream, monkeypatch):
    members(audience, 10)
    calls: list[list[bytes]] = []
    with firehose_behaviour(monkeypatch, batch=fail_entries([{2, 5, 7}], calls)):
        drain(connection)

    assert len(stream.records()) == 10
    total = all_time(connection)
    assert (total.delivered, total.failed, total.retried) == (10, 3, 3)
    assert latency_total(total) == 10  # one latency per delivered record, none for the failed tries
    hours = hourly(connection)
    assert (sum(r.delivered for r in hours), sum(r.failed for r in hours), sum(r.retried for r in hours)) == (10, 3, 3)


def test_a_failed_request_counts_its_records_failed_and_retried_until_the_connection_gives_up(
    connection, audience, stream, monkeypatch
):
    members(audience, 3)
    calls: list[int] = []
    with override_settings(FIREHOSE_RETRY_LIMIT=2, FIREHOSE_BACKOFF_BASE_SECONDS=0.02):
        with firehose_behaviour(monkeypatch, batch=throttle_first(100, calls)):
            drain(connection)

    assert len(calls) == 3
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED
    total = all_time(connection)
    # Three requests of three records failed; the first two were scheduled again, the last one faulted instead.
    assert (total.delivered, total.failed, total.retried) == (0, 9, 6)
    assert latency_total(total) == 0


def test_entries_failing_until_the_connection_gives_up_are_not_counted_retried_on_the_last_try(
    connection, audience, stream, monkeypatch
):
    members(audience, 2)
    calls: list[list[bytes]] = []
    with override_settings(FIREHOSE_RETRY_LIMIT=2, FIREHOSE_BACKOFF_BASE_SECONDS=0.02):
        with firehose_behaviour(monkeypatch, batch=fail_entries([{0, 1}] * 3, calls)):
            drain(connection)

    assert len(calls) == 3
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED
    total = all_time(connection)
    # As for a failed request: the first two tries were scheduled again, the last one faulted the connection instead.
    assert (total.delivered, total.failed, total.retried) == (0, 6, 4)


def test_a_throttled_request_then_delivered_counts_both(connection, audience, stream, monkeypatch):
    members(audience, 4)
    calls: list[int] = []
    with firehose_behaviour(monkeypatch, batch=throttle_first(1, calls)):
        drain(connection)

    assert len(stream.records()) == 4
    total = all_time(connection)
    assert (total.delivered, total.failed, total.retried) == (4, 4, 4)


# --- the last 24 hours ----------------------------------------------------------------------------------------------


def test_the_last_24_hours_give_24_points_ending_with_this_hour_and_a_p95(connection, audience, stream):
    members(audience, 5)
    drain(connection)

    day = connection_last_24_hours(connection.pk)

    assert len(day.points) == 24
    assert day.points[-1].hour == hour_of(timezone.now())
    assert [b.hour - a.hour for a, b in zip(day.points, day.points[1:], strict=False)] == [timedelta(hours=1)] * 23
    assert sum(point.delivered for point in day.points) == 5 == day.delivered
    assert (day.failed, day.retried) == (0, 0)
    assert day.p95_latency_seconds is not None and day.p95_latency_seconds > 0
    assert deliveries_last_24_hours() == {"delivered": 5, "failed": 0, "retried": 0}


def stats_row(connection: Connection, hour: datetime, **counters: int) -> DeliveryStats:
    return DeliveryStats.objects.create(connection=connection, hour=hour, **counters)


def test_the_last_24_hours_leave_out_older_hours_and_the_all_time_row(quiet_connection):
    connection = quiet_connection
    now = datetime(2026, 11, 28, 9, 21, tzinfo=UTC)
    this_hour = datetime(2026, 11, 28, 9, tzinfo=UTC)
    stats_row(connection, this_hour, delivered=4, failed=1, retried=1, latency_le_100ms=4)
    stats_row(connection, this_hour - timedelta(hours=23), delivered=6, latency_le_1s=6)
    stats_row(connection, this_hour - timedelta(hours=24), delivered=1000, failed=50, latency_over_30m=1000)
    stats_row(connection, ALL_TIME, delivered=1010, failed=51, retried=1, latency_over_30m=1010)

    day = connection_last_24_hours(connection.pk, now=now)

    assert day.points[0].hour == this_hour - timedelta(hours=23)
    assert [(point.delivered, point.failed) for point in day.points] == [(6, 0)] + [(0, 0)] * 22 + [(4, 1)]
    assert (day.delivered, day.failed, day.retried) == (10, 1, 1)
    # 10 latencies: 4 under 100 ms, 6 between 500 ms and 1 s; the 95th percentile is the 9.5th, in the 1 s bucket.
    assert day.p95_latency_seconds == pytest.approx(0.5 + 0.5 * (9.5 - 4) / 6)
    assert deliveries_last_24_hours(now=now) == {"delivered": 10, "failed": 1, "retried": 1}


def test_the_last_24_hours_of_a_connection_without_deliveries_have_no_p95(quiet_connection):
    connection = quiet_connection
    day = connection_last_24_hours(connection.pk)

    assert len(day.points) == 24 and all(point.delivered == point.failed == 0 for point in day.points)
    assert day.p95_latency_seconds is None


def buckets(**counts: int) -> list[int]:
    return [counts.get(name, 0) for _, name in LATENCY_BUCKETS]


@pytest.mark.parametrize(
    ("histogram", "quantile", "expected"),
    [
        (buckets(latency_le_100ms=10, latency_le_250ms=10), 0.95, 0.1 + 0.15 * 9 / 10),
        (buckets(latency_le_100ms=10, latency_le_250ms=10), 0.5, 0.1),
        (buckets(latency_le_100ms=10, latency_le_250ms=10), 0.25, 0.05),
        (buckets(latency_le_2500ms=1, latency_le_5s=3), 0.5, 2.5 + 2.5 * 1 / 3),
        (buckets(latency_le_1s=1, latency_over_30m=99), 0.95, 1800.0),  # the open bucket answers its lower bound
    ],
)
def test_the_latency_quantile_interpolates_inside_its_bucket(histogram, quantile, expected):
    assert latency_quantile(histogram, quantile) == pytest.approx(expected)


def test_an_empty_histogram_has_no_quantile():
    assert latency_quantile(buckets(), 0.95) is None


# --- /metrics -------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def public_metrics(settings):
    """Most tests scrape as a deployment with METRICS_PUBLIC=true would, and see every change at once."""
    settings.METRICS_PUBLIC = True
    settings.METRICS_CACHE_SECONDS = 0


def scrape(client: Client, **headers: str) -> dict[str, list]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.content.decode())}


def sample_value(samples: list, name: str, labels: dict[str, str]) -> float:
    [value] = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return value


def test_metrics_report_a_drain_per_connection_in_the_prometheus_text_format(
    client, connection, make_connection, audience, stream
):
    members(audience, 6)
    drain(connection)
    connection_pause(connection=connection)
    apply(audience, join("late-1", CustomerId="late-1"), join("late-2", CustomerId="late-2"))
    alert_raise(connection=connection, type=SystemAlert.Type.ACCESS_DENIED, message="denied")
    idle = make_connection(stream_name="idle-stream", status="paused")
    labels = {"connection": str(connection.pk), "audience": "LowEngagement", "stream": stream.name}
    labels["region"] = "us-east-1"

    families = scrape(client)

    assert sample_value(families["firehose_records_delivered"], "firehose_records_delivered_total", labels) == 6
    assert sample_value(families["firehose_records_failed"], "firehose_records_failed_total", labels) == 0
    assert sample_value(families["firehose_records_retried"], "firehose_records_retried_total", labels) == 0
    assert sample_value(families["firehose_backlog_records"], "firehose_backlog_records", labels) == 2
    assert sample_value(families["firehose_open_alerts"], "firehose_open_alerts", labels) == 1
    status = families["firehose_connection_status"]
    assert sample_value(status, "firehose_connection_status", {**labels, "status": "paused"}) == 1
    assert sample_value(status, "firehose_connection_status", {**labels, "status": "active"}) == 0
    latency = families["firehose_delivery_latency_seconds"]
    assert sample_value(latency, "firehose_delivery_latency_seconds_count", labels) == 6
    assert sample_value(latency, "firehose_delivery_latency_seconds_bucket", {**labels, "le": "+Inf"}) == 6
    bounds = [s for s in latency if s.name.endswith("_bucket") and s.labels["connection"] == str(connection.pk)]
    assert [s.labels["le"] for s in bounds][-1] == "+Inf" and len(bounds) == len(LATENCY_BUCKETS)
    assert [s.value for s in bounds] == sorted(s.value for s in bounds)  # cumulative
    total = all_time(connection)
    assert sample_value(latency, "firehose_delivery_latency_seconds_sum", labels) == pytest.approx(
        total.latency_sum_ms / 1000
    )
    # A connection that never delivered is reported too, at zero.
    idle_labels = {"connection": str(idle.pk), "stream": "idle-stream"}
    assert sample_value(families["firehose_records_delivered"], "firehose_records_delivered_total", idle_labels) == 0
    assert sample_value(latency, "firehose_delivery_latency_seconds_count", idle_labels) == 0


def test_metrics_count_failed_and_retried_records(client, connection, audience, stream, monkeypatch):
    members(audience, 4)
    calls: list[list[bytes]] = []
    with firehose_behaviour(monkeypatch, batch=fail_entries([{0, 3}], calls)):
        drain(connection)
    labels = {"connection": str(connection.pk)}

    families = scrape(client)

    assert sample_value(families["firehose_records_delivered"], "firehose_records_delivered_total", labels) == 4
    assert sample_value(families["firehose_records_failed"], "firehose_records_failed_total", labels) == 2
    assert sample_value(families["firehose_records_retried"], "firehose_records_retried_total", labels) == 2


def test_metrics_are_open_without_a_token_only_when_made_public(client, settings, db):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 200
    settings.METRICS_PUBLIC = False
    response = client.get("/metrics")
    assert response.status_code == 403 and b"METRICS_TOKEN" in response.content
    settings.DEBUG = True  # a developer's machine
    assert client.get("/metrics").status_code == 200


def test_each_process_computes_the_metrics_at_most_once_per_cache_period(client, settings, quiet_connection):
    settings.METRICS_CACHE_SECONDS = 60
    first = client.get("/metrics").content
    with CaptureQueriesContext(db_connection) as queries:
        again = client.get("/metrics").content
    assert again == first and len(queries) == 0


def test_metrics_ask_for_the_bearer_token_once_one_is_set(client, settings, quiet_connection):
    settings.METRICS_TOKEN = "scrape-token-0123456789"

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    families = scrape(client, Authorization="Bearer scrape-token-0123456789")
    assert "firehose_records_delivered" in families
