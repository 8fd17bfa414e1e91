from django.db import models
from django.db.models import Q

from .identities import IdentitiesField


class AudienceQuerySet(models.QuerySet):
    def live(self) -> "AudienceQuerySet":
        return self.filter(deleted_at__isnull=True)


class Audience(models.Model):
    """An audience. Its id is the record's `AudienceId`: never reused, also after deletion (rows are soft-deleted)."""

    internal_name = models.CharField(max_length=255)
    external_name = models.CharField(max_length=255, blank=True, default="")
    member_count = models.PositiveBigIntegerField(default=0, editable=False)
    stale_change_count = models.PositiveBigIntegerField(
        default=0, editable=False, help_text="Changes ignored because they were older than the last applied change."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = AudienceQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.name} (#{self.pk})"

    @property
    def name(self) -> str:
        """The record's `AudienceName`: the external name when set and not blank, else the internal name."""
        return self.external_name.strip() and self.external_name or self.internal_name

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None


class User(models.Model):
    """A user of the upstream systems, known by its `user_id`, with its current identities (contract section 2)."""

    external_id = models.CharField("user id", max_length=256, unique=True)
    identities = IdentitiesField(default=dict, blank=True)
    # Typed values for the rules (contract section 9), and the date-times among them as Unix seconds
    # (audiences.attributes). Defaults in the database too: the bulk statements of audiences.sql leave them out.
    attributes = models.JSONField(default=dict, db_default={}, blank=True)
    attribute_times = models.JSONField(default=dict, db_default={}, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "audience user"

    def __str__(self) -> str:
        return self.external_id


class Membership(models.Model):
    """The current state of one user in one audience, and the timestamp of the last change applied to it."""

    audience = models.ForeignKey(Audience, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    is_member = models.BooleanField(default=False)
    last_changed_timestamp = models.BigIntegerField(help_text="Unix seconds of the last applied change.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["audience", "user"], name="membership_unique_audience_user")]
        indexes = [
            models.Index(fields=["audience", "id"], condition=Q(is_member=True), name="membership_members_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.audience_id}: {'member' if self.is_member else 'not a member'}"


class MembershipChange(models.Model):
    """Append-only log of every applied change. Its deliveries are written in the same transaction."""

    class Kind(models.IntegerChoices):
        JOINED = 1, "joined"
        LEFT = 2, "left"
        IDENTITIES_CHANGED = 3, "identities changed"
        AUDIENCE_DELETED = 4, "audience deleted"

    audience = models.ForeignKey(Audience, on_delete=models.CASCADE, related_name="changes")
    user = models.ForeignKey(User, on_delete=models.CASCADE, null=True, blank=True, related_name="changes")
    kind = models.PositiveSmallIntegerField(choices=Kind.choices)
    timestamp = models.BigIntegerField(help_text="Unix seconds of the change: given at ingestion, else the server's.")
    identities = IdentitiesField(default=dict, blank=True, help_text="The user's identities after the change.")
    previous_identities = IdentitiesField(null=True, blank=True, help_text="The identities before an identity change.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["user", "audience", "id"], name="change_user_audience_idx")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.get_kind_display()}"

    @property
    def is_member(self) -> bool:
        return self.kind in (self.Kind.JOINED, self.Kind.IDENTITIES_CHANGED)
