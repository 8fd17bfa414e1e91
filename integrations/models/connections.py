"""Connection Settings: one audience forwarded to one delivery stream, with its delivery state."""

from __future__ import annotations

from functools import cached_property

from django.db import models

from audiences.models import Audience

from ..regions import Quota, region_quota
from ..validators import validate_identity_keys, validate_rate_limit_max, validate_region, validate_stream_name
from .configurations import Configuration


class LiveConnectionManager(models.Manager):
    """Connections not being deleted. A deleted connection disappears at once from every list, lookup and outbox
    query; its rows are purged in the background (`connections_purge_deleted`), through `Connection.all_objects`."""

    def get_queryset(self) -> models.QuerySet:
        return super().get_queryset().filter(deleted_at__isnull=True)


class Connection(models.Model):
    """Connection Settings: one audience forwarded to one delivery stream."""

    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        PAUSED = "paused", "paused"
        FAULTED = "faulted", "faulted"

    audience = models.ForeignKey(Audience, on_delete=models.PROTECT, related_name="connections")
    configuration = models.ForeignKey(Configuration, on_delete=models.PROTECT, related_name="connections")
    stream_name = models.CharField(
        "Delivery Stream Name",
        max_length=64,
        validators=[validate_stream_name],
    )
    region = models.CharField("Region", max_length=32, default="us-east-1", validators=[validate_region])
    send_anonymous_users = models.BooleanField("Send Anonymous Users", default=True)
    forward_email_addresses = models.BooleanField("Forward Email Addresses", default=True)
    forward_customer_ids = models.BooleanField("Forward Customer IDs", default=True)
    forward_idfas = models.BooleanField("Forward IDFAs", default=True)
    forward_google_advertising_ids = models.BooleanField("Forward Google Advertising IDs", default=True)
    identities_to_exclude = models.JSONField(
        "Identities To Exclude", default=list, blank=True, validators=[validate_identity_keys]
    )
    append_newline = models.BooleanField(
        "Append Newline", default=True, help_text="End every record with \\n (newline-delimited JSON in S3)."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)

    # Last outcomes, for one-glance status.
    delivered_count = models.PositiveBigIntegerField(default=0, editable=False)
    failed_count = models.PositiveBigIntegerField(default=0, editable=False)
    anonymous_skipped_count = models.PositiveBigIntegerField(default=0, editable=False)
    last_delivered_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, default="", editable=False)
    last_error_at = models.DateTimeField(null=True, blank=True, editable=False)
    stream_arn = models.CharField(max_length=255, blank=True, default="", editable=False)
    last_tested_at = models.DateTimeField(null=True, blank=True, editable=False)

    # Delivery state.
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    next_attempt_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Set after a failed request: nothing is sent before then."
    )
    batch_permitted = models.BooleanField(
        default=True, editable=False, help_text="False once PutRecordBatch was denied: records go one by one."
    )
    max_records_per_second = models.PositiveIntegerField(
        "Max Records Per Second",
        null=True,
        blank=True,
        help_text="Client-side limit; blank means the region's Direct PUT quota (500,000 in us-east-1).",
        validators=[validate_rate_limit_max],
    )
    max_bytes_per_second = models.PositiveIntegerField(
        "Max Bytes Per Second",
        null=True,
        blank=True,
        help_text="Client-side limit; blank means the region's Direct PUT quota (5 MiB/s in us-east-1).",
        validators=[validate_rate_limit_max],
    )
    send_rate = models.FloatField(
        default=1.0,
        editable=False,
        help_text="The share of the limits in use now: halved when Firehose throttles, then raised step by step.",
    )
    send_rate_lowered_at = models.DateTimeField(null=True, blank=True, editable=False)
    send_slot_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When the next batch may go out under the rate limit."
    )
    resync_cursor = models.BigIntegerField(
        null=True, blank=True, editable=False, help_text="Membership id up to which the running resync has queued."
    )
    resync_until = models.BigIntegerField(
        null=True, blank=True, editable=False, help_text="The last membership id that existed when the resync began."
    )
    resync_total = models.PositiveBigIntegerField(default=0, editable=False)
    resync_queued = models.PositiveBigIntegerField(default=0, editable=False)
    resync_sent = models.PositiveBigIntegerField(
        default=0, editable=False, help_text="Records of the running resync settled so far: sent, skipped or failed."
    )
    resync_requested_at = models.DateTimeField(null=True, blank=True, editable=False)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Set when deleted: its rows are being purged."
    )

    all_objects = models.Manager()
    objects = LiveConnectionManager()

    class Meta:
        ordering = ["id"]
        default_manager_name = "objects"
        base_manager_name = "all_objects"
        permissions = [("operate_connection", "Can test, resync, pause and resume connections")]

    def __str__(self) -> str:
        return f"{self.audience.name} → {self.stream_name} ({self.region})"

    @property
    def account_id(self) -> str:
        parts = self.stream_arn.split(":")
        return parts[4] if len(parts) > 5 else ""

    @cached_property
    def excluded_identity_keys(self) -> frozenset[str]:
        excluded = set(self.identities_to_exclude or [])
        if not self.forward_email_addresses:
            excluded.add("Email")
        if not self.forward_customer_ids:
            excluded.add("CustomerId")
        if not self.forward_idfas:
            excluded.add("AppleAdvertisingIdentifier")
        if not self.forward_google_advertising_ids:
            excluded.add("GoogleAdvertisingIdentifier")
        return frozenset(excluded)

    @property
    def resync_running(self) -> bool:
        return self.resync_cursor is not None

    @property
    def quota(self) -> Quota:
        return region_quota(self.region)

    @property
    def records_per_second_limit(self) -> int:
        return self.max_records_per_second or self.quota.records_per_second

    @property
    def bytes_per_second_limit(self) -> int:
        return self.max_bytes_per_second or self.quota.bytes_per_second
