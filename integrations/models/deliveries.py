"""The backlog and its log: deliveries, their shards' leases and layout, attempts and failures."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from audiences.models import MembershipChange, User

from .connections import Connection


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


class DeliveryFailure(models.Model):
    """One failed try of one delivery, written on the failure paths only: with the delivery's last attempt, they are
    the attempts its delivery log row shows."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="failures", db_constraint=False)
    attempt = models.ForeignKey(DeliveryAttempt, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    error = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return f"delivery #{self.delivery_id} failed in attempt #{self.attempt_id}"
