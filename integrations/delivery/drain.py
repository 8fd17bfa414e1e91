"""One drain of one shard: take the lease, then claim → reserve → send → settle, batch after batch, until the shard is
empty, the time budget is spent, or the connection stops being sendable."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from .batch import DrainReport, connection_for_drain, is_sendable
from .claim import claim_batch
from .lease import lease_acquire, lease_release, lease_renew
from .ratelimit import longest_wait, send_slot_give_back, send_slot_reserve
from .resync import resync_page_queue
from .send import send_batch
from .sweep import connection_has_due_work

logger = logging.getLogger(__name__)


def connection_drain(connection_id: int, shard: int = 0, *, time_budget: float | None = None) -> DrainReport:
    """Send what is due on one shard of a connection, for at most `time_budget` seconds: claim a batch, take its
    place under the rate limit, send it, record the outcome; again, renewing the lease as it goes."""
    report = DrainReport()
    lease = lease_acquire(connection_id, shard)
    if lease is None:
        report.leased = False
        return report
    token, claimed_through = lease
    deadline = time.monotonic() + (settings.DRAIN_TIME_BUDGET_SECONDS if time_budget is None else time_budget)
    renewed = time.monotonic()
    waiting = False
    try:
        connection = connection_for_drain(connection_id)
        while connection is not None:
            if not is_sendable(connection, timezone.now()):
                break
            if time.monotonic() >= deadline:
                report.more_work = True
                break
            batch = claim_batch(connection, shard, claimed_through, report)
            if batch is None:
                continue  # only skipped or oversized deliveries were claimed: claim again
            waiting = batch.waiting_for_other_shards
            if not batch.deliveries:
                if not waiting and connection.resync_running and resync_page_queue(connection):
                    continue
                break
            # Take the batch's place under the rate limit, and re-read the connection: paused, faulted or backed
            # off by another shard meanwhile means the batch stays pending.
            slot = send_slot_reserve(connection, batch)
            connection = slot.connection
            if not is_sendable(connection, timezone.now()):
                send_slot_give_back(connection, slot.cost)
                break
            if slot.wait > longest_wait(deadline):
                # Never sleep through the lease: the place goes back, and the shard waits in the database.
                send_slot_give_back(connection, slot.cost)
                report.parked_until = timezone.now() + timedelta(seconds=slot.wait)
                break
            if slot.wait > 0:
                time.sleep(slot.wait)
            if time.monotonic() - renewed > settings.DRAIN_LEASE_SECONDS / 4:
                if not lease_renew(connection_id, shard, token, claimed_through):
                    logger.warning("Lost the lease on shard %s of connection %s; stopping.", shard, connection_id)
                    break
                renewed = time.monotonic()
            if send_batch(connection, batch, report):
                claimed_through = batch.claimed_through
            # else: the failed entries stay pending after `claimed_through`, the first to be claimed again
            report.batches += 1
            if waiting:
                break
    finally:
        lease_release(connection_id, shard, token, claimed_through, report.parked_until)
    if not report.more_work and not waiting and report.parked_until is None:
        # A change committed between the last empty claim and the release found the lease taken: look once more.
        report.more_work = connection_has_due_work(connection_id, shard, claimed_through)
    return report
