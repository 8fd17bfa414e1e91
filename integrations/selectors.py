"""Reads for connections and alerts, shared by the admin and the API."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Aggregate, Case, Count, Max, OuterRef, Q, QuerySet, Subquery, Sum, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import sql
from .models import (
    OPEN_ALERTS,
    AlertHourlyCount,
    Configuration,
    Connection,
    Delivery,
    DeliveryAttempt,
    DeliveryStats,
    SystemAlert,
)
from .regions import region_partition
from .stats import deliveries_last_24_hours, hour_of

# The windows of the System Alerts page. Occurrences are counted by the hour, so a window covers its whole first hour.
ALERT_WINDOWS: dict[str, tuple[str, timedelta]] = {
    "1h": ("1 hour", timedelta(hours=1)),
    "12h": ("12 hours", timedelta(hours=12)),
    "24h": ("24 hours", timedelta(hours=24)),
    "7d": ("7 days", timedelta(days=7)),
}
DEFAULT_ALERT_WINDOW = "12h"
ALERT_RANKING_SIZE = 50
# Admin pages count a backlog up to this many records, then say "more than": a count stays bounded however large the
# backlog grows (the API's `backlog` and /metrics are exact). A fresh backlog's rows are not yet all-visible, so each
# counted row may cost a heap fetch.
BACKLOG_COUNT_CAP = 10_000


def connection_backlog(connection: Connection) -> int:
    """Pending records: counted on the backlog's partial index."""
    return Delivery.objects.filter(connection=connection, status=Delivery.Status.PENDING).count()


def connection_backlog_capped(connection_id: int) -> int:
    """The backlog counted up to BACKLOG_COUNT_CAP + 1 rows of the backlog's partial index."""
    pending = Delivery.objects.filter(connection_id=connection_id, status=Delivery.Status.PENDING)
    return pending.order_by()[: BACKLOG_COUNT_CAP + 1].count()


def deliveries_backlog_capped() -> int:
    """Every connection's backlog, counted up to BACKLOG_COUNT_CAP + 1 rows."""
    return Delivery.objects.filter(status=Delivery.Status.PENDING).order_by()[: BACKLOG_COUNT_CAP + 1].count()


def connection_iam_policy(connection: Connection) -> dict:
    """The IAM policy to attach to the configuration's user, filled in for this connection."""
    account_id = connection.account_id or "{account-id}"
    partition = region_partition(connection.region)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "firehose:DescribeDeliveryStream",
                    "firehose:PutRecord",
                    "firehose:PutRecordBatch",
                ],
                "Resource": [
                    f"arn:{partition}:firehose:{connection.region}:{account_id}:deliverystream/{connection.stream_name}"
                ],
            }
        ],
    }


def alerts_list(*, connection_id: int | None = None, open: bool | None = None) -> QuerySet[SystemAlert]:
    alerts = SystemAlert.objects.select_related("connection").order_by("-last_seen")
    if connection_id is not None:
        alerts = alerts.filter(connection_id=connection_id)
    if open is not None:
        alerts = alerts.filter(OPEN_ALERTS if open else ~OPEN_ALERTS)
    return alerts


def connections_with_backlog(queryset: QuerySet[Connection] | None = None) -> QuerySet[Connection]:
    """Connections annotated with `backlog` (pending deliveries, up to BACKLOG_COUNT_CAP + 1) in the same query: one
    correlated, bounded count per row on the backlog's partial index, instead of one query per connection."""
    queryset = Connection.objects.all() if queryset is None else queryset
    return queryset.annotate(backlog=sql.backlog_count_capped(BACKLOG_COUNT_CAP + 1))


def _total_per_row(rows: QuerySet, outer: str, aggregate: Aggregate) -> Coalesce:
    """An aggregate of `rows` (filtered on OuterRef("pk") through `outer`) for each row of the outer query, 0 when
    there are none: one correlated subquery instead of a query per row."""
    return Coalesce(Subquery(rows.order_by().values(outer).annotate(total=aggregate).values("total")), 0)


def alerts_with_window_count(queryset: QuerySet[SystemAlert], *, since: datetime) -> QuerySet[SystemAlert]:
    """Alerts annotated with `window_count`: their occurrences in the hours from `since` on."""
    occurrences = AlertHourlyCount.objects.filter(alert=OuterRef("pk"), hour__gte=hour_of(since))
    return queryset.annotate(window_count=_total_per_row(occurrences, "alert", Sum("count")))


def alert_ranking(*, since: datetime, limit: int = ALERT_RANKING_SIZE) -> list[dict[str, Any]]:
    """Connections ranked by alert volume since `since` (by the hour), with their open alerts and latest alert:
    two queries over the hourly counts and the alert rows, whatever the number of deliveries."""
    rows = list(
        AlertHourlyCount.objects.filter(hour__gte=hour_of(since))
        .values("alert__connection")
        .annotate(occurrences=Sum("count"), last_hour=Max("hour"))
        .order_by("-occurrences", "-last_hour")[:limit]
    )
    ids = [row["alert__connection"] for row in rows]
    connections = Connection.objects.select_related("audience").in_bulk(ids)
    latest: dict[int, SystemAlert] = {}
    open_counts: dict[int, int] = {}
    for alert in SystemAlert.objects.filter(connection_id__in=ids).order_by("last_seen"):
        latest[alert.connection_id] = alert
        open_counts[alert.connection_id] = open_counts.get(alert.connection_id, 0) + alert.is_open
    return [
        {
            "connection": connections[row["alert__connection"]],
            "occurrences": row["occurrences"],
            "open": open_counts.get(row["alert__connection"], 0),
            "latest": latest.get(row["alert__connection"]),
        }
        for row in rows
        if row["alert__connection"] in connections
    ]


def open_alert_count() -> int:
    return SystemAlert.objects.filter(OPEN_ALERTS).count()


def resync_progress(connection: Connection) -> dict[str, Any]:
    """Where the connection's last resync stands: `idle` (never asked), `running` (members still being queued or
    records still to send) or `done`; with the counts of members queued, records sent and remaining."""
    queued, total = connection.resync_queued, connection.resync_total
    sent = min(connection.resync_sent, queued)
    # While members are still being queued, the plan is the member count when the resync began (or more).
    planned = max(total, queued) if connection.resync_running else queued
    remaining = planned - sent
    if connection.resync_requested_at is None:
        state = "idle"
    elif connection.resync_running or sent < queued:
        state = "running"
    else:
        state = "done"
    if state == "idle":
        text = "Never run."
    elif state == "done":
        text = f"Done: {sent:,} of {queued:,} records sent."
    else:
        text = f"Queued {queued:,} of {total:,} members · sent {sent:,} · remaining {remaining:,}"
        if connection.status != Connection.Status.ACTIVE:
            text += f" (the connection is {connection.status}: nothing is sent until it is resumed)"
    return {
        "state": state,
        "total": total,
        "queued": queued,
        "sent": sent,
        "remaining": remaining,
        "text": text,
        "requested_at": connection.resync_requested_at.isoformat() if connection.resync_requested_at else None,
    }


def connections_worst_first(*, since: datetime, limit: int = 5) -> list[Connection]:
    """The connections that most need a look, in one query: faulted first, then by open alerts, records failed since
    `since` and backlog (each a bounded subquery: the alert rows, the hourly stats, a capped count)."""
    open_alerts = SystemAlert.objects.filter(OPEN_ALERTS, connection=OuterRef("pk"))
    failed = DeliveryStats.objects.filter(connection=OuterRef("pk"), hour__gte=hour_of(since))
    connections = connections_with_backlog(Connection.objects.select_related("audience")).annotate(
        open_alerts=_total_per_row(open_alerts, "connection", Count("pk")),
        failed_recently=_total_per_row(failed, "connection", Sum("failed")),
        faulted_first=Case(When(status=Connection.Status.FAULTED, then=0), default=1),
    )
    return list(connections.order_by("faulted_first", "-open_alerts", "-failed_recently", "-backlog", "pk")[:limit])


# --- the operator console's pages ---------------------------------------------------------------------------------


def connection_by_id(connection_id: int) -> Connection | None:
    """The connection with its audience, or None when there is none (or it was deleted)."""
    return Connection.objects.select_related("audience").filter(pk=connection_id).first()


def connection_choices() -> list[tuple[int, str]]:
    """(pk, label) of every connection, in id order, with the audience names loaded in the same query."""
    return [(c.pk, str(c)) for c in Connection.objects.select_related("audience").order_by("pk")]


def connections_faulted_count() -> int:
    return Connection.objects.filter(status=Connection.Status.FAULTED).count()


def connection_has_failed_deliveries(connection_id: int) -> bool:
    return Delivery.objects.filter(connection_id=connection_id, status=Delivery.Status.FAILED).exists()


def connection_open_alert_count(connection: Connection) -> int:
    return connection.alerts.filter(OPEN_ALERTS).count()


def configuration_connections(configuration: Configuration) -> QuerySet[Connection]:
    """The connections that use the configuration, in id order, each with its audience."""
    return configuration.connections.select_related("audience").order_by("pk")


@dataclass(frozen=True)
class DeletionCounts:
    """Rows of each kind that go with deleted connections, each counted up to BACKLOG_COUNT_CAP + 1."""

    deliveries: int
    attempts: int
    alerts: int
    backlog: int  # of the deliveries, those still pending


def connections_deletion_counts(connection_ids: list[int]) -> DeletionCounts:
    """What deleting these connections takes with it, each kind counted up to BACKLOG_COUNT_CAP + 1 rows: never
    Django's walk over every delivery (a busy connection has millions of them)."""

    def capped(queryset: QuerySet) -> int:
        return queryset.order_by()[: BACKLOG_COUNT_CAP + 1].count()

    backlog = Delivery.objects.filter(connection_id__in=connection_ids, status=Delivery.Status.PENDING)
    return DeletionCounts(
        deliveries=capped(Delivery.objects.filter(connection_id__in=connection_ids)),
        attempts=capped(DeliveryAttempt.objects.filter(connection_id__in=connection_ids)),
        alerts=capped(SystemAlert.objects.filter(connection_id__in=connection_ids)),
        backlog=capped(backlog) if backlog.exists() else 0,
    )


@dataclass(frozen=True)
class HealthSummary:
    active: int
    paused: int
    faulted: int
    last_delivered_at: datetime | None
    backlog: int  # counted up to BACKLOG_COUNT_CAP + 1
    day: dict[str, int]  # deliveries_last_24_hours
    worst: list[Connection]  # annotated as by connections_worst_first


def health_summary() -> HealthSummary:
    """Connections by status, the last 24 hours' deliveries, the backlog and the connections that most need a look
    (not active, or with open alerts, failures in the last 24 hours or a backlog), for the admin index.

    A fixed number of queries whatever the size of the tables: an aggregate over the connections, a sum over the
    last 24 hourly stats rows per connection, a capped count of the pending deliveries, and one query for the worst
    connections."""
    status = Connection.Status
    totals = Connection.objects.aggregate(
        active=Count("pk", filter=Q(status=status.ACTIVE)),
        paused=Count("pk", filter=Q(status=status.PAUSED)),
        faulted=Count("pk", filter=Q(status=status.FAULTED)),
        last_delivered_at=Max("last_delivered_at"),
    )
    backlog = deliveries_backlog_capped()
    since = timezone.now() - timedelta(hours=24)
    return HealthSummary(
        **totals,
        backlog=backlog,
        day=deliveries_last_24_hours(),
        worst=[
            connection
            for connection in connections_worst_first(since=since)
            if connection.status != status.ACTIVE
            or connection.open_alerts
            or connection.failed_recently
            or connection.backlog
        ],
    )
