"""Kicks: the Celery messages that ask a worker to drain a shard, or to purge deleted connections.

A kick carries nothing the database does not hold; a lost one is recovered by the beat sweep. Tasks are published by
name (`integrations.tasks` consumes them), so that the engine never imports the tasks that call it, and through the
project's Celery app: Celery's current app is another one in a thread that did not create it (a request thread of
`runserver`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from project.celery import app as celery_app
from project.process_local import Pause

from .layout import delivery_shard_count

logger = logging.getLogger(__name__)

DRAIN_TASK = "integrations.tasks.drain_connection"
PURGE_DELETED_TASK = "integrations.tasks.purge_deleted_connections"

PURGE_EXPIRES_SECONDS = 3600
BROKER_RETRY_AFTER_SECONDS = 5.0
# A kick expires in the broker after this long (a worker that takes it later drops it): a drain that late would only
# find what the sweep has kicked since.
KICK_EXPIRES_SECONDS = 300
# A kick already queued for a shard makes another one useless: at most one waits per shard (a mark in the cache,
# which the drain task clears as it starts). The mark lasts as long as the kick can; the sweep alone replaces a mark
# older than KICK_LOST_AFTER_SECONDS, whose kick was lost with the broker (or, with a cache that is not shared, is
# waiting in another process's memory).
KICK_PENDING_SECONDS = KICK_EXPIRES_SECONDS
KICK_LOST_AFTER_SECONDS = 60


# After a failed publish, this process skips kicks for a few seconds, so that requests do not each wait for the broker.
broker_pause = Pause(BROKER_RETRY_AFTER_SECONDS)


def kick_pending_key(connection_id: int, shard: int) -> str:
    return f"kick:{connection_id}:{shard}"


def connection_kick(
    connection_id: int, shard: int | None = None, *, replace_marks_older_than: float | None = None
) -> bool:
    """Ask workers to drain a connection: one shard, or every shard, unless a kick already waits for it. Best
    effort: when the broker is down, the beat sweep kicks later. Returns whether a kick was queued."""
    shards = range(delivery_shard_count(cached=True)) if shard is None else (shard,)
    queued = False
    for each in shards:
        if broker_pause.active():
            return queued
        if not _kick_mark(connection_id, each, replace_marks_older_than):
            continue  # a kick is already waiting for this shard
        try:
            celery_app.send_task(
                DRAIN_TASK,
                (connection_id, each),
                expires=KICK_EXPIRES_SECONDS,
                priority=settings.CELERY_TASK_DEFAULT_PRIORITY,
            )
            queued = True
        except Exception:  # noqa: BLE001 - a lost kick is recovered by the sweep, it must not fail the caller
            kick_taken(connection_id, each)
            broker_pause.start()
            logger.warning("Could not queue a drain of connection %s; the sweep will pick it up.", connection_id)
    return queued


def _kick_mark(connection_id: int, shard: int, replace_older_than: float | None = None) -> bool:
    """Mark a kick as queued for this shard; False when one already was (and its mark is not too old to trust)."""
    key, now = kick_pending_key(connection_id, shard), time.time()
    try:
        if cache.add(key, now, timeout=KICK_PENDING_SECONDS):
            return True
        if replace_older_than is None:
            return False
        marked = cache.get(key)
        if marked is not None and now - float(marked) <= replace_older_than:
            return False
        cache.set(key, now, timeout=KICK_PENDING_SECONDS)
        return True
    except Exception:  # noqa: BLE001 - without the cache, kick anyway
        return True


def kick_taken(connection_id: int, shard: int) -> None:
    """A drain task started: the next change needs a kick of its own."""
    try:
        cache.delete(kick_pending_key(connection_id, shard))
    except Exception:  # noqa: BLE001
        pass


def connections_kick_on_commit(connection_ids: Iterable[int]) -> None:
    for connection_id in sorted(set(connection_ids)):
        transaction.on_commit(lambda connection_id=connection_id: connection_kick(connection_id))


def purge_deleted_kick() -> None:
    """Ask a worker to purge the rows of deleted connections; the hourly retention runs it too."""
    try:
        celery_app.send_task(
            PURGE_DELETED_TASK, expires=PURGE_EXPIRES_SECONDS, priority=settings.CELERY_TASK_DEFAULT_PRIORITY
        )
    except Exception:  # noqa: BLE001 - the hourly retention purges what a lost task left
        logger.warning("Could not queue %s; the hourly retention will run it.", PURGE_DELETED_TASK)
