"""System Alerts: one row per connection and type, counted per hour for the ranking, never holding a secret (the
transport scrubs them) nor a whole identity (samples are masked)."""

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from .models import OPEN_ALERTS, AlertHourlyCount, Connection, SystemAlert
from .records import record_masked
from .stats import hour_of
from .transport.base import Reason

# What a transport's reason for a failure raises; None: no alert (the network, retried with backoff). The alert
# types themselves are `SystemAlert.Type` (contract section 6).
ALERT_FOR_REASON: dict[Reason, SystemAlert.Type | None] = {
    Reason.THROTTLED: SystemAlert.Type.INTERNAL_SERVER_ERROR,
    Reason.SERVER_ERROR: SystemAlert.Type.INTERNAL_SERVER_ERROR,
    Reason.UNREACHABLE: None,
    Reason.ACCESS_DENIED: SystemAlert.Type.ACCESS_DENIED,
    Reason.STREAM_NOT_FOUND: SystemAlert.Type.STREAM_NOT_FOUND,
    Reason.STREAM_NOT_ACTIVE: SystemAlert.Type.STREAM_NOT_ACTIVE,
    Reason.RECORD_TOO_LARGE: SystemAlert.Type.RECORD_TOO_LARGE,
    Reason.ENDPOINT_NOT_USABLE: SystemAlert.Type.ENDPOINT_NOT_USABLE,
    Reason.CREDENTIALS_NOT_USABLE: SystemAlert.Type.CREDENTIALS_NOT_USABLE,
}

# An alert of these types says the stream could not be reached or written: it resolves itself once the connection
# delivers again. The others are about records or the IAM policy, and stay open until acknowledged.
RESOLVED_BY_DELIVERY = [
    SystemAlert.Type.RETRY_LIMIT_EXCEEDED,
    SystemAlert.Type.INTERNAL_SERVER_ERROR,
    SystemAlert.Type.ACCESS_DENIED,
    SystemAlert.Type.STREAM_NOT_FOUND,
    SystemAlert.Type.STREAM_NOT_ACTIVE,
    SystemAlert.Type.ENDPOINT_NOT_USABLE,
    SystemAlert.Type.CREDENTIALS_NOT_USABLE,
]


def alert_for(reason: Reason) -> SystemAlert.Type | None:
    return ALERT_FOR_REASON[reason]


def alert_raise(*, connection: Connection | int, type: str, message: str, sample: bytes | None = None) -> None:
    """Count one occurrence (reopening the alert if it was acknowledged or resolved), with the failed record, masked,
    as its sample when there is one."""
    connection_id = connection if isinstance(connection, int) else connection.pk
    now = timezone.now()
    fields = {
        "last_seen": now,
        "last_message": message[:2000],
        "acknowledged": False,
        "acknowledged_at": None,
        "resolved_at": None,
    }
    if sample is not None:
        fields["sample_record"] = record_masked(sample)[:4000]
    with transaction.atomic():
        alert = SystemAlert.objects.select_for_update().filter(connection_id=connection_id, type=type).first()
        if alert is None:
            try:
                with transaction.atomic():
                    alert = SystemAlert.objects.create(connection_id=connection_id, type=type, first_seen=now, **fields)
            except IntegrityError:  # raised by another worker meanwhile
                alert = SystemAlert.objects.select_for_update().get(connection_id=connection_id, type=type)
                _count_again(alert, fields)
        else:
            _count_again(alert, fields)
        hour = hour_of(now)
        if not AlertHourlyCount.objects.filter(alert=alert, hour=hour).update(count=F("count") + 1):
            AlertHourlyCount.objects.create(alert=alert, hour=hour, count=1)


def _count_again(alert: SystemAlert, fields: dict) -> None:
    SystemAlert.objects.filter(pk=alert.pk).update(count=F("count") + 1, **fields)


def alerts_acknowledge(*, alert_ids: list[int]) -> int:
    return SystemAlert.objects.filter(OPEN_ALERTS, pk__in=alert_ids).update(
        acknowledged=True, acknowledged_at=timezone.now()
    )


def alerts_acknowledge_all(*, connection_id: int | None = None) -> int:
    """Acknowledge every open alert, or every open alert of one connection."""
    alerts = SystemAlert.objects.filter(OPEN_ALERTS)
    if connection_id is not None:
        alerts = alerts.filter(connection_id=connection_id)
    return alerts.update(acknowledged=True, acknowledged_at=timezone.now())


def alerts_resolve_on_delivery(*, connection_id: int) -> int:
    """The connection delivered again: its open alerts about reaching the stream resolve themselves."""
    return SystemAlert.objects.filter(
        Q(connection_id=connection_id, type__in=RESOLVED_BY_DELIVERY), OPEN_ALERTS
    ).update(resolved_at=timezone.now())
