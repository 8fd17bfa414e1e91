"""Thin Celery tasks: each one calls a service. They carry kicks only; the database holds the work."""

import logging

from celery import shared_task

from .delivery import connection_drain, connections_sweep
from .services import connection_kick

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def drain_connection(connection_id: int) -> dict:
    report = connection_drain(connection_id)
    if report.batches:
        logger.info(
            "Connection %s: %s records delivered, %s skipped, %s failed in %s batches.",
            connection_id, report.delivered, report.skipped, report.failed, report.batches,
        )  # fmt: skip
    if report.more_work:
        connection_kick(connection_id)
    return {"batches": report.batches, "delivered": report.delivered, "leased": report.leased}


@shared_task(ignore_result=True)
def sweep_connections() -> list[int]:
    return connections_sweep()
