"""Configuration Settings: the AWS credentials that connections send with, the secret encrypted at rest."""

from __future__ import annotations

from django.db import models

from .. import crypto
from ..validators import validate_access_key_id, validate_endpoint_url


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
