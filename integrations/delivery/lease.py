"""One drain per shard at a time: a `DrainLease` row holds a token with an expiry, and where the shard's next claim
starts (`claimed_through`)."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from ..layout import delivery_shards_changing
from ..models import DrainLease


def lease_acquire(connection_id: int, shard: int) -> tuple[str, int] | None:
    """Take the shard's lease; returns the token and the shard's `claimed_through`, or None when it is taken, the
    shard waits for the rate limit (`not_before`), or the shards are being changed."""
    if delivery_shards_changing():
        return None
    now = timezone.now()
    token = secrets.token_hex(8)
    expires = now + timedelta(seconds=settings.DRAIN_LEASE_SECONDS)
    leases = DrainLease.objects.filter(connection_id=connection_id, shard=shard)
    free = (Q(expires_at__isnull=True) | Q(expires_at__lt=now)) & (Q(not_before__isnull=True) | Q(not_before__lte=now))
    if leases.filter(free).update(token=token, expires_at=expires, not_before=None):
        return token, leases.values_list("claimed_through", flat=True).get()
    if leases.exists():
        return None
    try:
        with transaction.atomic():
            DrainLease.objects.create(connection_id=connection_id, shard=shard, token=token, expires_at=expires)
    except IntegrityError:
        return None  # another drain created it first, or the connection is gone
    return token, 0


def lease_renew(connection_id: int, shard: int, token: str, claimed_through: int) -> bool:
    """Extend the lease; False when it was taken over (or released by Retry failed), or the shards are changing."""
    if delivery_shards_changing():
        return False
    expires = timezone.now() + timedelta(seconds=settings.DRAIN_LEASE_SECONDS)
    leases = DrainLease.objects.filter(connection_id=connection_id, shard=shard, token=token)
    return bool(leases.update(expires_at=expires, claimed_through=claimed_through))


def lease_release(
    connection_id: int, shard: int, token: str, claimed_through: int, not_before: datetime | None = None
) -> None:
    DrainLease.objects.filter(connection_id=connection_id, shard=shard, token=token).update(
        token="", expires_at=None, claimed_through=claimed_through, not_before=not_before
    )
