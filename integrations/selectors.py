"""Reads for connections and alerts, shared by the admin and the API."""

from django.db.models import QuerySet

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
