import hashlib
import secrets

from django.db import models


class ApiKey(models.Model):
    """A bearer key for the HTTP API. Only its SHA-256 is stored; the key itself is shown once, at creation."""

    class Scope(models.TextChoices):
        INGEST = "ingest", "ingest (changes and users)"
        MANAGE = "manage", "manage (audiences, configurations, connections, alerts)"

    name = models.CharField(max_length=255)
    prefix = models.CharField(max_length=16, editable=False, help_text="The key's first characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    @staticmethod
    def generate() -> str:
        return "fak_" + secrets.token_urlsafe(32)
