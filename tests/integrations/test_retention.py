"""Retention: settled deliveries and unneeded attempts older than DELIVERY_RETENTION_DAYS are purged in small
batches; pending and failed deliveries, their last attempts and the membership change log stay."""

import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection as db
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audiences.models import MembershipChange
from integrations import tasks
from integrations.connections import connection_create
from integrations.models import Connection, Delivery, DeliveryAttempt
from integrations.retention import deliveries_purge

from ..factories import apply, join

pytestmark = pytest.mark.django_db

RETENTION = timedelta(days=14)
OLD, RECENT = timedelta(days=20), timedelta(days=1)
Status = Delivery.Status


@pytest.fixture
def connections(audience, configuration) -> list[Connection]:
    """Two connections of one audience: paused, so that nothing is sent and the test sets every outcome itself."""
    return [
        connection_create(audience=audience, configuration=configuration, stream_name=f"stream-{n}", status="paused")
        for n in range(2)
    ]


class History:
    """Deliveries and attempts of every status and age, made from real membership changes."""

    def __init__(self, audience, connections: list[Connection]) -> None:
        self.audience = audience
        self.connections = connections
        self.users = 0
        self.kept_deliveries: set[int] = set()
        self.purged_deliveries: set[int] = set()
        self.kept_attempts: set[int] = set()
        self.purged_attempts: set[int] = set()

    def attempt(self, connection: Connection, age: timedelta, *, purged: bool) -> DeliveryAttempt:
        attempt = DeliveryAttempt.objects.create(
            connection=connection,
            operation="PutRecordBatch",
            records=1,
            bytes=200,
            outcome=DeliveryAttempt.Outcome.DELIVERED,
            started_at=timezone.now() - age,
            duration_ms=12,
        )
        (self.purged_attempts if purged else self.kept_attempts).add(attempt.pk)
        return attempt

    def deliveries(
        self,
        status: int,
        age: timedelta,
        count: int,
        *,
        purged: bool,
        settled_age: timedelta | None = None,
        attempt: dict[int, DeliveryAttempt] | None = None,
    ) -> None:
        """`count` changes, each with one delivery per connection, queued `age` ago and settled `settled_age` ago."""
        for _ in range(count):
            self.users += 1
            apply(self.audience, join(f"user-{self.users}", CustomerId=f"c{self.users}"))
            change = MembershipChange.objects.latest("id")
            MembershipChange.objects.filter(pk=change.pk).update(created_at=timezone.now() - age)
            for connection in self.connections:
                delivery = Delivery.objects.get(connection=connection, change=change)
                settled = status in (Status.DELIVERED, Status.SKIPPED)
                Delivery.objects.filter(pk=delivery.pk).update(
                    status=status,
                    created_at=timezone.now() - age,
                    delivered_at=timezone.now() - (settled_age or age) if settled else None,
                    last_attempt=attempt[connection.pk] if attempt else None,
                )
                (self.purged_deliveries if purged else self.kept_deliveries).add(delivery.pk)


@pytest.fixture
def history(audience, connections) -> History:
    history = History(audience, connections)

    def attempts(age: timedelta, *, purged: bool) -> dict[int, DeliveryAttempt]:
        return {c.pk: history.attempt(c, age, purged=purged) for c in connections}

    # Old and settled: purged, and so is the attempt that delivered them.
    history.deliveries(Status.DELIVERED, OLD, 7, purged=True, attempt=attempts(OLD, purged=True))
    history.deliveries(Status.SKIPPED, OLD, 7, purged=True)
    # Old but unresolved: kept, with the attempts they point to.
    history.deliveries(Status.PENDING, OLD, 4, purged=False, attempt=attempts(OLD, purged=False))
    history.deliveries(Status.FAILED, OLD, 4, purged=False, attempt=attempts(OLD, purged=False))
    # Queued long ago but delivered recently (after an outage): kept for now.
    history.deliveries(
        Status.DELIVERED, OLD, 2, purged=False, settled_age=RECENT, attempt=attempts(RECENT, purged=False)
    )
    # Recent, of every status: kept.
    for status in Status:
        history.deliveries(status, RECENT, 2, purged=False)
    # Attempts no delivery points to: purged when old, kept when recent.
    for _ in range(5):
        attempts(OLD, purged=True)
    attempts(RECENT, purged=False)
    return history


def test_it_purges_old_settled_deliveries_and_old_attempts_and_keeps_everything_else(history):
    changes = MembershipChange.objects.count()
    pending_attempt = dict(
        Delivery.objects.filter(status=Status.PENDING, last_attempt__isnull=False).values_list("pk", "last_attempt")
    )

    report = deliveries_purge(older_than=RETENTION, batch_size=3)

    assert set(Delivery.objects.values_list("pk", flat=True)) == history.kept_deliveries
    assert set(DeliveryAttempt.objects.values_list("pk", flat=True)) == history.kept_attempts
    assert (report.deliveries, report.attempts, report.finished) == (
        len(history.purged_deliveries),
        len(history.purged_attempts),
        True,
    )
    assert len(history.purged_deliveries) == 28 and report.batches >= 28 // 3, "in many small batches"
    assert MembershipChange.objects.count() == changes, "the change log is never purged"
    assert dict(Delivery.objects.filter(pk__in=pending_attempt).values_list("pk", "last_attempt")) == pending_attempt, (
        "pending deliveries keep their last attempt"
    )


def test_every_delete_is_bounded_by_the_batch_size(history):
    with CaptureQueriesContext(db) as queries:
        deliveries_purge(older_than=RETENTION, batch_size=3)

    statements = [query["sql"] for query in queries.captured_queries]
    deletes = [sql for sql in statements if sql.upper().startswith("DELETE")]
    assert len(deletes) >= 10
    for sql in deletes:
        ids = re.search(r"\bIN \(([^)]*)\)", sql)
        assert ids is not None, f"a DELETE not limited to listed ids: {sql}"
        assert len(ids.group(1).split(",")) <= 3
    selects = [sql for sql in statements if sql.upper().startswith("SELECT") and "integrations_delivery" in sql]
    assert all("LIMIT 3" in sql for sql in selects if "ORDER BY" in sql)


def test_nothing_recent_or_unresolved_is_purged_on_a_second_run(history):
    deliveries_purge(older_than=RETENTION, batch_size=3)
    report = deliveries_purge(older_than=RETENTION, batch_size=3)
    assert (report.deliveries, report.attempts, report.finished) == (0, 0, True)
    assert set(Delivery.objects.values_list("pk", flat=True)) == history.kept_deliveries


def test_a_run_out_of_time_stops_and_the_next_one_finishes(history):
    report = deliveries_purge(older_than=RETENTION, batch_size=3, time_budget=0)
    assert (report.deliveries, report.attempts, report.finished) == (0, 0, False)

    report = deliveries_purge(older_than=RETENTION, batch_size=3)
    assert report.finished
    assert set(Delivery.objects.values_list("pk", flat=True)) == history.kept_deliveries


def test_the_hourly_task_purges_after_the_configured_days(history):
    with override_settings(DELIVERY_RETENTION_DAYS=30):
        assert tasks.purge_deliveries() == {"deliveries": 0, "attempts": 0, "finished": True}
    with override_settings(DELIVERY_RETENTION_DAYS=14):
        result = tasks.purge_deliveries()
    assert result == {
        "deliveries": len(history.purged_deliveries),
        "attempts": len(history.purged_attempts),
        "finished": True,
    }
    assert set(Delivery.objects.values_list("pk", flat=True)) == history.kept_deliveries


def test_a_retention_of_zero_days_keeps_everything(history):
    before = Delivery.objects.count(), DeliveryAttempt.objects.count()
    with override_settings(DELIVERY_RETENTION_DAYS=0):
        tasks.purge_deliveries()
    assert (Delivery.objects.count(), DeliveryAttempt.objects.count()) == before


def test_beat_runs_the_purge_every_hour():
    entry = settings.CELERY_BEAT_SCHEDULE["purge-deliveries"]
    assert entry["task"] == tasks.purge_deliveries.name
    assert entry["schedule"] == timedelta(hours=1)
    assert settings.DELIVERY_RETENTION_DAYS == 14


def test_hourly_counters_past_the_window_go_and_the_all_time_ones_stay(connections):
    from integrations.alerts import alert_raise
    from integrations.models import ALL_TIME, AlertHourlyCount, DeliveryStats, SystemAlert
    from integrations.stats import hour_of

    connection = connections[0]
    now = hour_of(timezone.now())
    for hour in (ALL_TIME, now - OLD, now - timedelta(days=3), now):
        DeliveryStats.objects.create(connection=connection, hour=hour, delivered=1)
    alert_raise(connection=connection, type=SystemAlert.Type.ACCESS_DENIED, message="denied")
    alert = SystemAlert.objects.get(connection=connection)
    AlertHourlyCount.objects.create(alert=alert, hour=now - OLD, count=4)
    AlertHourlyCount.objects.create(alert=alert, hour=now - timedelta(days=3), count=2)

    report = deliveries_purge(older_than=RETENTION, batch_size=3)

    assert report.hourly_rows == 2
    assert set(DeliveryStats.objects.values_list("hour", flat=True)) == {ALL_TIME, now - timedelta(days=3), now}
    assert set(AlertHourlyCount.objects.values_list("hour", flat=True)) == {now - timedelta(days=3), now}
    assert SystemAlert.objects.filter(pk=alert.pk).exists()
