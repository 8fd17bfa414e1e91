"""Thin Celery tasks: each one calls a service. They carry kicks only; the database holds the work."""

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings

from integrations.delivery import connection_drain, connections_sweep

from .health import worker_heartbeat_record
from .kicks import (
    DRAIN_TASK,
    PURGE_DELETED_TASK,
    PURGE_EXPIRES_SECONDS,
    connection_kick,
    kick_taken,
    purge_deleted_kick,
)
from .retention import connections_purge_deleted, deliveries_purge

logger = logging.getLogger(__name__)


@shared_task(name=DRAIN_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def drain_connection(connection_id: int, shard: int = 0) -> dict:
    kick_taken(connection_id, shard)
    report = connection_drain(connection_id, shard)
    if report.batches:
        logger.info(
            "Connection %s, shard %s: %s records delivered, %s skipped, %s failed in %s batches.",
            connection_id, shard, report.delivered, report.skipped, report.failed, report.batches,
        )  # fmt: skip
    if report.more_work:
        connection_kick(connection_id, shard)
    return {"batches": report.batches, "delivered": report.delivered, "leased": report.leased}


@shared_task(ignore_result=True)
def sweep_connections() -> list[int]:
    worker_heartbeat_record()
    return connections_sweep()


@shared_task(name=PURGE_DELETED_TASK, ignore_result=True)
def purge_deleted_connections() -> dict:
    """Queued when a connection is deleted, and hourly: its rows go in batches, then the connection row."""
    report = connections_purge_deleted()
    if not report.finished:
        purge_deleted_kick()  # the rest at once
    return {"deliveries": report.deliveries, "attempts": report.attempts, "finished": report.finished}


@shared_task(ignore_result=True)
def purge_deliveries() -> dict:
    """Hourly (beat): delete what DELIVERY_RETENTION_DAYS no longer keeps; 0 keeps everything."""
    purge_deleted_kick()
    if not settings.DELIVERY_RETENTION_DAYS:
        return {"deliveries": 0, "attempts": 0, "finished": True}
    report = deliveries_purge(older_than=timedelta(days=settings.DELIVERY_RETENTION_DAYS))
    if report.deliveries or report.attempts:
        logger.info(
            "Purged %s deliveries and %s delivery attempts older than %s days in %s batches.",
            report.deliveries, report.attempts, settings.DELIVERY_RETENTION_DAYS, report.batches,
        )  # fmt: skip
    if not report.finished:
        purge_deliveries.apply_async(expires=PURGE_EXPIRES_SECONDS)  # the rest at once, with a fresh time budget
    return {"deliveries": report.deliveries, "attempts": report.attempts, "finished": report.finished}
