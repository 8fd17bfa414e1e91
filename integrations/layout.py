"""How many shards the backlogs are split into: one row in the database (`DeliveryLayout`), read by every process.

DELIVERY_SHARDS is the count wanted; the count in use is the database's, so that a process started with another
value never queues a delivery in a shard that nobody drains. `delivery_shards_change` moves to a new count without
stranding a row: it stops the drains, waits for the running ones to give their leases back, then moves every pending
and failed delivery to the shard of its user under the new count (`user_id % shards`) and rewinds every shard's
claims, in one transaction that the writers of deliveries wait for (step 4 of project.transactions).
`manage.py migrate` runs it when DELIVERY_SHARDS differs from the database; `manage.py reshard_deliveries` too.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import transaction
from django.db.models import Case, ExpressionWrapper, F, IntegerField, Q, Value, When
from django.utils import timezone

from project.process_local import Recent

from . import sql
from .models import Delivery, DeliveryLayout, DrainLease

logger = logging.getLogger(__name__)

LAYOUT_ID = 1
# Kicks only need an approximate count (a kick for a shard that no longer exists finds nothing to do).
SHARD_COUNT_CACHE_SECONDS = 5.0


_count_read = Recent(lambda: SHARD_COUNT_CACHE_SECONDS)


class ReshardTimeout(Exception):
    """Drains still held leases when the time to wait for them ran out; nothing was moved."""


def delivery_layout() -> DeliveryLayout:
    layout = DeliveryLayout.objects.filter(pk=LAYOUT_ID).first()
    if layout is None:  # a new database: the first process to look writes the count it was started with
        layout, _ = DeliveryLayout.objects.get_or_create(pk=LAYOUT_ID, defaults={"shards": settings.DELIVERY_SHARDS})
    return layout


def delivery_shard_count(*, cached: bool = False) -> int:
    if not cached:
        _count_read.clear()
    return _count_read.get(lambda: delivery_layout().shards)


def delivery_shards_changing() -> bool:
    return DeliveryLayout.objects.filter(pk=LAYOUT_ID, changing_to__isnull=False).exists()


def delivery_layout_lock_shared() -> int:
    """Until the transaction ends, keep the shard count from changing; returns it. Taken by every transaction that
    queues deliveries, before the connections' queue locks."""
    sql.layout_lock_shared()
    return delivery_layout().shards


def delivery_shards_change(*, count: int, wait_seconds: float | None = None) -> int:
    """Split every backlog into `count` shards. Returns how many deliveries moved. Raises ReshardTimeout, having
    moved nothing, when drains still hold leases after `wait_seconds` (default: a lease's length and a bit)."""
    if not 1 <= count <= 256:
        raise ValueError("The shard count must be between 1 and 256.")
    layout = delivery_layout()
    if layout.shards == count and layout.changing_to is None:
        return 0
    DeliveryLayout.objects.filter(pk=LAYOUT_ID).update(changing_to=count)
    wait = settings.DRAIN_LEASE_SECONDS + 5 if wait_seconds is None else wait_seconds
    deadline = time.monotonic() + wait
    while _live_leases():
        if time.monotonic() > deadline:
            DeliveryLayout.objects.filter(pk=LAYOUT_ID).update(changing_to=None)
            raise ReshardTimeout(f"Drains still hold leases after {wait:g} s; nothing was moved.")
        time.sleep(0.2)
    with transaction.atomic():
        sql.layout_lock_exclusive()
        # Lease rows before delivery rows, as Retry failed takes them (project.transactions, step 6).
        DrainLease.objects.update(claimed_through=0, token="", expires_at=None, not_before=None)
        moved = Delivery.objects.filter(status__in=[Delivery.Status.PENDING, Delivery.Status.FAILED]).update(
            shard=Case(
                When(user__isnull=True, then=Value(0)),
                default=ExpressionWrapper(F("user_id") % count, output_field=IntegerField()),
                output_field=IntegerField(),
            )
        )
        DeliveryLayout.objects.filter(pk=LAYOUT_ID).update(shards=count, changing_to=None)
    _count_read.clear()
    logger.info("Deliveries now split into %s shards; %s pending or failed deliveries moved.", count, moved)
    return moved  # the sweep kicks the shards with work


def _live_leases() -> bool:
    return DrainLease.objects.filter(~Q(token=""), expires_at__gt=timezone.now()).exists()
