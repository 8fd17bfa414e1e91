"""System Alerts: one row per connection and type, counted, never holding a secret (the transport scrubs them)."""

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from .models import Connection, SystemAlert


def alert_raise(*, connection: Connection | int, type: str, message: str) -> None:
    connection_id = connection if isinstance(connection, int) else connection.pk
    now = timezone.now()
    message = message[:2000]
    updated = SystemAlert.objects.filter(connection_id=connection_id, type=type).update(
        count=F("count") + 1, last_seen=now, last_message=message, acknowledged=False, acknowledged_at=None
    )
    if updated:
        return
    try:
        with transaction.atomic():
            SystemAlert.objects.create(
                connection_id=connection_id, type=type, first_seen=now, last_seen=now, last_message=message
            )
    except IntegrityError:
        SystemAlert.objects.filter(connection_id=connection_id, type=type).update(
            count=F("count") + 1, last_seen=now, last_message=message, acknowledged=False, acknowledged_at=None
        )


def alerts_acknowledge(*, alert_ids: list[int]) -> int:
    return SystemAlert.objects.filter(pk__in=alert_ids, acknowledged=False).update(
        acknowledged=True, acknowledged_at=timezone.now()
    )
