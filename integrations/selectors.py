"""Reads for connections and alerts, shared by the admin and the API."""

from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce

from .models import Connection, Delivery, SystemAlert


def connection_backlog(connection: Connection) -> int:
    """Pending records: counted on the backlog's partial index."""
    return Delivery.objects.filter(connection=connection, status=Delivery.Status.PENDING).count()


def connection_iam_policy(connection: Connection) -> dict:
    """The IAM policy to attach to the configuration's user, filled in for this connection."""
    account_id = connection.account_id or "{account-id}"
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
                    f"arn:aws:firehose:{connection.region}:{account_id}:deliverystream/{connection.stream_name}"
                ],
            }
        ],
    }


def alerts_list(*, connection_id: int | None = None, open: bool | None = None) -> QuerySet[SystemAlert]:
    alerts = SystemAlert.objects.select_related("connection").order_by("-last_seen")
    if connection_id is not None:
        alerts = alerts.filter(connection_id=connection_id)
    if open is not None:
        alerts = alerts.filter(acknowledged=not open)
    return alerts


def connections_with_backlog(queryset: QuerySet[Connection] | None = None) -> QuerySet[Connection]:
    """Connections annotated with `backlog` (pending deliveries) in the same query: one correlated count per row,
    each on the backlog's partial index, instead of one query per connection."""
    queryset = Connection.objects.all() if queryset is None else queryset
    pending = (
        Delivery.objects.filter(connection=OuterRef("pk"), status=Delivery.Status.PENDING)
        .order_by()
        .values("connection")
        .annotate(count=Count("pk"))
        .values("count")
    )
    return queryset.annotate(backlog=Coalesce(Subquery(pending), 0))
