"""Write transactions: the one global lock order, and a whole-transaction retry on deadlock.

Every transaction that takes more than one lock takes them in this order (each kind in ascending id), so that two
transactions never wait for each other. On PostgreSQL:

1. **Audience rows.** A batch of changes takes its audience `FOR KEY SHARE` (batches run side by side); deleting an
   audience, and creating or deleting one of its connections, take it `FOR UPDATE`, which waits for the open batches
   and makes later ones wait, so that every batch sees the audience's connections as they are when it commits.
   A batch that changes a user's identities takes the user's other audiences `FOR KEY SHARE` after step 3: only
   `FOR UPDATE` conflicts with that, and the transactions holding `FOR UPDATE` never wait for a user or a queue lock.
2. **Connection rows** (`FOR NO KEY UPDATE`): a resync page, an audience's deletion.
3. **User rows**: new users are inserted in the order of their user ids, then every user of the batch is locked
   `FOR NO KEY UPDATE` in primary key order. This serialises each user's changes across all audiences.
4. **The layout of the delivery shards** (`delivery_layout_lock_shared`, an advisory lock): shared by every
   transaction that queues deliveries, exclusive while the deliveries move to a new shard count.
5. **The queue lock of each connection** (`deliveries_insert_lock`, an advisory lock per connection, in connection id
   order), held to commit: a connection's deliveries become visible in id order.
6. **Lease rows, then delivery rows** (Retry failed, a change of the shard count). A drain's own batch is the
   exception that needs none: its delivery rows belong to the drain that holds their shard's lease.
7. **Counters last**: a batch adds to its audience's member count, and a drain settles its batch and then adds to the
   connection's counters, as their last writes; nothing is waited for after them.

A deadlock can still happen where this order cannot be followed (PostgreSQL's own foreign key checks at commit, an
operator's statement run by hand), and a lock can be held for long by something outside the product:
`atomic_with_retry` gives up a wait after DATABASE_LOCK_TIMEOUT_SECONDS, runs the whole transaction again on a
deadlock, a serialization failure or such a timeout, a bounded number of times, and raises `Contention` when they
run out (the API answers 503 with `Retry-After`).
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.conf import settings
from django.db import OperationalError, connection, transaction

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# deadlock_detected, serialization_failure, lock_not_available
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
ATTEMPTS = 5
RETRY_AFTER_SECONDS = 1


class Contention(Exception):
    """A transaction failed on a deadlock or a serialization failure every time it was tried."""


def is_retryable(error: BaseException) -> bool:
    cause = error.__cause__ or error
    return getattr(cause, "sqlstate", None) in RETRYABLE_SQLSTATES


def atomic_with_retry(func: Callable[P, T]) -> Callable[P, T]:
    """Run `func` in a transaction; on a deadlock or a serialization failure, roll back and run it again (after a
    short random pause), up to ATTEMPTS times. Inside an outer transaction it is only a savepoint: the outermost
    transaction is the one that can be retried."""

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        if connection.in_atomic_block:
            with transaction.atomic():
                return func(*args, **kwargs)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with transaction.atomic():
                    _lock_timeout_set()
                    return func(*args, **kwargs)
            except OperationalError as error:
                if not is_retryable(error):
                    raise
                logger.info("%s: %s (try %s of %s)", func.__qualname__, error.__cause__ or error, attempt, ATTEMPTS)
                if attempt == ATTEMPTS:
                    raise Contention(func.__qualname__) from error
                time.sleep(random.uniform(0.01, 0.05) * attempt)
        raise AssertionError("unreachable")

    return run


def _lock_timeout_set() -> None:
    if connection.vendor == "postgresql" and settings.DATABASE_LOCK_TIMEOUT_SECONDS:
        with connection.cursor() as cursor:
            milliseconds = int(settings.DATABASE_LOCK_TIMEOUT_SECONDS * 1000)
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{milliseconds}ms"])
