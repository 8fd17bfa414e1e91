"""Writes for configurations (Configuration Settings): the AWS credentials that connections send with."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from .models import Configuration


@transaction.atomic
def configuration_create(
    *,
    name: str,
    access_key_id: str,
    secret_access_key: str,
    send_remove_on_identity_change: bool = True,
    endpoint_url: str = "",
) -> Configuration:
    configuration = Configuration(
        name=name,
        access_key_id=access_key_id,
        send_remove_on_identity_change=send_remove_on_identity_change,
        endpoint_url=endpoint_url,
    )
    configuration.secret_access_key = secret_access_key
    configuration.full_clean()
    configuration.save()
    return configuration


@transaction.atomic
def configuration_update(*, configuration: Configuration, secret_access_key: str = "", **fields: Any) -> Configuration:
    """Change settings. A blank secret keeps the stored one; any other value replaces it."""
    for field, value in fields.items():
        setattr(configuration, field, value)
    changed = [*fields, "updated_at"]
    if secret_access_key:
        configuration.secret_access_key = secret_access_key
        changed.append("encrypted_secret_access_key")
    configuration.full_clean()
    configuration.save(update_fields=changed)
    return configuration
