"""Send a batch through the connection's transport, log the attempt, and hand the outcome to `settle`.

Credentials allowed PutRecord but not PutRecordBatch (the seed's IAM policy) send one record per request, and
the connection remembers it (`batch_permitted`) with a Batch Not Permitted alert.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db import connection as db_connection
from django.utils import timezone

from ..alerts import alert_raise
from ..destinations import connection_transport, connection_transport_class
from ..models import Connection, DeliveryAttempt, SystemAlert
from ..transport.base import EntryFailure, Transport, TransportError
from .batch import Batch, DrainReport
from .settle import request_failed, settle

logger = logging.getLogger(__name__)


def send_batch(connection: Connection, batch: Batch, report: DrainReport) -> bool:
    """Send one batch and record the outcome. Returns True when the stream accepted every record."""
    try:
        transport = connection_transport(connection)
    except TransportError as error:  # a secret that no key decrypts: no request can be signed
        operation = connection_transport_class(connection).batch_operation
        attempt = attempt_log(connection, operation, batch, timezone.now(), time.monotonic(), error=error)
        request_failed(connection, batch.deliveries, attempt, error, report, sample=batch.records[0])
        return False
    if connection.batch_permitted:
        started, clock = timezone.now(), time.monotonic()
        try:
            failures = transport.send_batch(batch.records, batch.keys)
        except TransportError as error:
            attempt = attempt_log(connection, transport.batch_operation, batch, started, clock, error=error)
            if error.is_access_denied:
                return _send_one_by_one(connection, batch, report, transport, batch_denied=error)
            request_failed(connection, batch.deliveries, attempt, error, report, sample=batch.records[0])
            return False
        _with_database_retry(_accepted, connection, transport.batch_operation, batch, started, clock, failures, report)
        return not failures
    return _send_one_by_one(connection, batch, report, transport)


def _send_one_by_one(
    connection: Connection,
    batch: Batch,
    report: DrainReport,
    transport: Transport,
    batch_denied: TransportError | None = None,
) -> bool:
    operation = transport.single_operation
    for position, (delivery, record, key) in enumerate(zip(batch.deliveries, batch.records, batch.keys, strict=True)):
        single = Batch([delivery], [record], [key], len(record))
        started, clock = timezone.now(), time.monotonic()
        try:
            transport.send_one(record, key)
        except TransportError as error:
            attempt = attempt_log(connection, operation, single, started, clock, error=error)
            request_failed(connection, batch.deliveries[position:], attempt, error, report, sample=record)
            return False
        _with_database_retry(_accepted, connection, operation, single, started, clock, [], report)
        if batch_denied is not None:
            Connection.objects.filter(pk=connection.pk).update(batch_permitted=False)
            alert_raise(
                connection=connection,
                type=SystemAlert.Type.BATCH_NOT_PERMITTED,
                message=f"{transport.batch_operation} was denied, so records are sent one by one with {operation}. "
                f"Add {transport.batch_permission} to the IAM policy to send up to {transport.limits.batch_records} "
                f"records per request. ({batch_denied.code})",
            )
            batch_denied = None
    return True


def _accepted(
    connection: Connection,
    operation: str,
    batch: Batch,
    started: datetime,
    clock: float,
    failures: list[EntryFailure],
    report: DrainReport,
) -> None:
    attempt = attempt_log(connection, operation, batch, started, clock, failures=failures)
    settle(connection, batch, attempt, failures, report)


def _with_database_retry(write: Callable[..., None], *args: object) -> None:
    """Record what the stream accepted even through a database restart: giving up here would resend the records."""
    deadline = time.monotonic() + settings.DELIVERY_RECORD_RETRY_SECONDS
    while True:
        try:
            return write(*args)
        except (OperationalError, InterfaceError):
            if time.monotonic() > deadline:
                raise
            logger.warning("The database is unavailable; retrying to record a delivered batch.")
            db_connection.close()
            time.sleep(0.5)


def attempt_log(
    connection: Connection,
    operation: str,
    batch: Batch,
    started: datetime,
    clock: float,
    *,
    failures: list[EntryFailure] | None = None,
    error: TransportError | None = None,
) -> DeliveryAttempt:
    """One row of the attempt log per request."""
    if error is not None:
        outcome = DeliveryAttempt.Outcome.RETRYABLE if error.retryable else DeliveryAttempt.Outcome.PERMANENT
        code, message, failed = error.code, error.message, len(batch.deliveries)
    elif failures:
        outcome = DeliveryAttempt.Outcome.PARTIAL
        code, message, failed = failures[0].code, failures[0].message, len(failures)
    else:
        outcome, code, message, failed = DeliveryAttempt.Outcome.DELIVERED, "", "", 0
    return DeliveryAttempt.objects.create(
        connection=connection,
        operation=operation,
        records=len(batch.deliveries),
        failed_records=failed,
        bytes=batch.size,
        outcome=outcome,
        error_code=code,
        error_message=message,
        started_at=started,
        duration_ms=max(0, int((time.monotonic() - clock) * 1000)),
    )
