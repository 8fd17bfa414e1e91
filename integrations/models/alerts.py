"""System Alerts, and their occurrences counted by the hour."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from .connections import Connection


class SystemAlert(models.Model):
    """One connection and one alert type, with how often and when it happened."""

    class Type(models.TextChoices):
        RETRY_LIMIT_EXCEEDED = "Retry Limit Exceeded", "Retry Limit Exceeded"
        INTERNAL_SERVER_ERROR = "500 - Internal Server Error", "500 - Internal Server Error"
        ACCESS_DENIED = "Access Denied", "Access Denied"
        STREAM_NOT_FOUND = "Stream Not Found", "Stream Not Found"
        STREAM_NOT_ACTIVE = "Stream Not Active", "Stream Not Active"
        RECORD_TOO_LARGE = "Record Too Large", "Record Too Large"
        BATCH_NOT_PERMITTED = "Batch Not Permitted", "Batch Not Permitted"
        ENDPOINT_NOT_USABLE = "Endpoint Not Usable", "Endpoint Not Usable"
        CREDENTIALS_NOT_USABLE = "Credentials Not Usable", "Credentials Not Usable"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="alerts")
    type = models.CharField(max_length=64, choices=Type.choices)
    count = models.PositiveBigIntegerField(default=1)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    last_message = models.TextField(blank=True, default="")
    sample_record = models.TextField(
        blank=True, default="", help_text="A record that failed, with its identity values masked."
    )
    acknowledged = models.BooleanField(default=False)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(
        null=True, blank=True, help_text="Set when the connection delivered again; a new occurrence reopens the alert."
    )

    class Meta:
        verbose_name = "system alert"
        verbose_name_plural = "System Alerts"
        ordering = ["-last_seen"]
        constraints = [models.UniqueConstraint(fields=["connection", "type"], name="alert_unique_connection_type")]
        permissions = [("acknowledge_systemalert", "Can acknowledge system alerts")]

    def __str__(self) -> str:
        return f"{self.type} on connection #{self.connection_id}"

    @property
    def is_open(self) -> bool:
        return not self.acknowledged and self.resolved_at is None


OPEN_ALERTS = Q(acknowledged=False, resolved_at__isnull=True)


class AlertHourlyCount(models.Model):
    """How often an alert happened in one hour: the System Alerts page ranks connections over a window with these."""

    alert = models.ForeignKey(SystemAlert, on_delete=models.CASCADE, related_name="hourly_counts")
    hour = models.DateTimeField()
    count = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["alert", "hour"], name="alert_hourly_unique_alert_hour")]
        indexes = [models.Index(fields=["hour"], name="alert_hourly_hour_idx")]

    def __str__(self) -> str:
        return f"{self.count} × alert #{self.alert_id} in the hour of {self.hour:%Y-%m-%d %H:00}"
