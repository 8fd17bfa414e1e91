from datetime import UTC, datetime
from functools import cached_property

from django.db import models
from django.db.models import Q
from django.utils import timezone

from audiences.models import Audience, MembershipChange, User

from . import crypto
from .regions import Quota, region_quota
from .validators import (
    validate_access_key_id,
    validate_endpoint_url,
    validate_identity_keys,
    validate_rate_limit_max,
    validate_region,
    validate_stream_name,
)


class Configuration(models.Model):
    """Configuration Settings: the IAM credentials, reused by many connections. The secret is encrypted at rest."""

    name = models.CharField(max_length=255, unique=True)
    access_key_id = models.CharField(
        "Access Key ID",
        max_length=128,
        validators=[validate_access_key_id],
    )
    encrypted_secret_access_key = models.TextField(editable=False)
    send_remove_on_identity_change = models.BooleanField(
        "Send Remove On Identity Change",
        default=True,
        help_text="When a member's identities change, first send IsMember false with the old identities.",
    )
    endpoint_url = models.URLField(
        "Endpoint URL",
        blank=True,
        default="",
        help_text="Optional: a VPC endpoint or a local emulator, http or https (never a cloud metadata or "
        "link-local address).",
        validators=[validate_endpoint_url],
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def secret_access_key(self) -> str:
        return crypto.decrypt(self.encrypted_secret_access_key)

    @secret_access_key.setter
    def secret_access_key(self, value: str) -> None:
        self.encrypted_secret_access_key = crypto.encrypt(value)

    @property
    def access_key_hint(self) -> str:
        return f"…{self.access_key_id[-4:]}" if self.access_key_id else ""


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


class DrainLease(models.Model):
    """Who drains one shard of a connection's backlog. A shard holds the deliveries of the users with
    user_id % DeliveryLayout.shards == shard, so that shards run in parallel without reordering any user's records."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="leases")
    shard = models.PositiveSmallIntegerField()
    token = models.CharField(max_length=32, blank=True, default="")
    expires_at = models.DateTimeField(null=True, blank=True)
    claimed_through = models.BigIntegerField(
        default=0,
        help_text="Every delivery of the shard up to this id is settled: claims start after it, without walking "
        "the index entries of rows already delivered.",
    )
    not_before = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The shard's next batch waits for its place under the rate limit until then: no drain takes the "
        "shard before (a drain never sleeps longer than a slice of its lease).",
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connection", "shard"], name="lease_unique_connection_shard")]

    def __str__(self) -> str:
        return f"shard {self.shard} of connection #{self.connection_id}"


class DeliveryLayout(models.Model):
    """The one row that says how many shards the backlogs are split into. Every process reads it from here, whatever
    its own DELIVERY_SHARDS says, so that no row is queued in a shard nobody drains; `delivery_shards_change` moves
    the pending and failed deliveries to a new count (run by `manage.py migrate` when DELIVERY_SHARDS changed)."""

    shards = models.PositiveSmallIntegerField()
    changing_to = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Set while the deliveries move to this shard count: no drain runs meanwhile."
    )
    changed_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.shards} delivery shards"


class Delivery(models.Model):
    """One record to send on one connection. Pending rows form the connection's backlog, sent in id order."""

    class Kind(models.IntegerChoices):
        CHANGE = 1, "membership change"
        RESYNC = 2, "resync"
        AUDIENCE_DELETED = 3, "audience deleted"

    class Status(models.IntegerChoices):
        PENDING = 1, "pending"
        DELIVERED = 2, "delivered"
        SKIPPED = 3, "skipped"
        FAILED = 4, "failed"

    # Deliveries are the hot table: every index is written again each time a row is settled, and every database
    # constraint is checked for each of the thousands of rows a batch of changes writes. So the connection and the
    # change have no index of their own (the backlog and status indexes start with the connection; changes are
    # never deleted one by one), and the change and the user no database constraint: the one service that writes
    # deliveries takes both from rows of the same transaction, and deleting them still cascades (Django does it).
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="deliveries", db_index=False)
    shard = models.PositiveSmallIntegerField(default=0, help_text="user_id % DeliveryLayout.shards; 0 without a user.")
    kind = models.PositiveSmallIntegerField(choices=Kind.choices)
    change = models.ForeignKey(
        MembershipChange,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    user = models.ForeignKey(
        User, on_delete=models.CASCADE, null=True, blank=True, related_name="+", db_constraint=False
    )
    is_member = models.BooleanField(null=True)
    uses_previous_identities = models.BooleanField(
        default=False, help_text="The IsMember false record of an identity change carries the old identities."
    )
    timestamp = models.BigIntegerField(help_text="The record's MembershipChangedTimestamp.")
    status = models.PositiveSmallIntegerField(choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True, default="")
    # A pointer into the attempt log, without a database constraint: checking it on every settled row costs more
    # than it protects. Retention keeps the attempts of unsettled deliveries (delivery_unsettled_attempt_idx).
    last_attempt = models.ForeignKey(
        "DeliveryAttempt",
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(fields=["connection", "shard", "id"], condition=Q(status=1), name="delivery_backlog_idx"),
            models.Index(fields=["connection", "status", "created_at"], name="delivery_status_idx"),
            models.Index(
                fields=["last_attempt"], condition=Q(status__in=[1, 4]), name="delivery_unsettled_attempt_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"delivery #{self.pk}"


class DeliveryAttempt(models.Model):
    """One request sent to Firehose: how many records, what came back, how long it took."""

    class Outcome(models.TextChoices):
        DELIVERED = "delivered", "delivered"
        PARTIAL = "partial", "partially failed"
        RETRYABLE = "retryable", "failed, will retry"
        PERMANENT = "permanent", "failed permanently"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="attempts")
    operation = models.CharField(max_length=32)
    records = models.PositiveIntegerField()
    failed_records = models.PositiveIntegerField(default=0)
    bytes = models.PositiveBigIntegerField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    error_code = models.CharField(max_length=128, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()

    class Meta:
        indexes = [models.Index(fields=["connection", "started_at"], name="attempt_connection_time_idx")]

    def __str__(self) -> str:
        return f"{self.operation} of {self.records} records: {self.get_outcome_display()}"


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


class DeliveryFailure(models.Model):
    """One failed try of one delivery, written on the failure paths only: with the delivery's last attempt, they are
    the attempts its delivery log row shows."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="failures", db_constraint=False)
    attempt = models.ForeignKey(DeliveryAttempt, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    error = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return f"delivery #{self.delivery_id} failed in attempt #{self.attempt_id}"
