"""Kicks: at most one waits in the broker per shard, so a burst of API calls does not bury the workers in no-op
drain tasks; the sweep respects that mark too (it replaces a kick only once the waiting one could have expired)."""

import pytest
import redis
from django.conf import settings
from django.core.cache import cache

from integrations.delivery import connections_sweep
from integrations.kicks import connection_kick, kick_taken
from integrations.tasks import sweep_connections

from ..factories import members


@pytest.fixture
def broker(settings):
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    cache.clear()
    yield client
    client.flushdb()


def queued(broker) -> int:
    """Tasks waiting in the default queue, at every priority (kombu keeps one Redis list per priority step)."""
    return sum(broker.llen(key) for key in broker.keys("celery*"))


def test_one_kick_waits_per_shard_until_a_drain_takes_it(connection, broker, delivery_shards):
    delivery_shards(2)
    connection_kick(connection.pk)
    connection_kick(connection.pk)
    connection_kick(connection.pk, 1)
    assert queued(broker) == 2  # one per shard

    kick_taken(connection.pk, 1)  # a worker started draining shard 1: a new change needs a new kick
    connection_kick(connection.pk)
    assert queued(broker) == 3


@pytest.fixture
def busy_connections(make_connection, audience, delivery_shards):
    """5 connections of 4 shards each, all with work to do (their initial syncs), and no worker running."""
    delivery_shards(4)
    members(audience, 20)
    return [make_connection(stream_name=f"stream-{n}") for n in range(5)]


def test_the_sweep_never_queues_a_kick_already_waiting(busy_connections, broker):
    counts = []
    for _ in range(3):
        connections_sweep()
        counts.append(queued(broker))
    assert counts == [20, 20, 20]


def test_the_sweep_kicks_again_once_the_broker_and_the_marks_are_lost(busy_connections, broker):
    assert len(connections_sweep()) == 20
    broker.flushdb()  # Redis restarted empty: the kicks and their marks are gone (the marks live in the same Redis)
    cache.clear()
    assert len(connections_sweep()) == 20 and queued(broker) == 20


def test_the_sweep_goes_ahead_of_every_waiting_kick(busy_connections, broker):
    from project.celery import app

    for connection in busy_connections:
        connection_kick(connection.pk)
    sweep_connections.apply_async(**settings.CELERY_BEAT_SCHEDULE["sweep-connections"]["options"])
    assert queued(broker) == 21
    taken = []
    with app.connection_for_read() as connection:
        queue = app.amqp.queues[app.conf.task_default_queue]
        with connection.Consumer(queue, accept=["json"], callbacks=[lambda body, message: taken.append(message)]):
            connection.drain_events(timeout=5)
    assert [message.headers["task"] for message in taken] == ["integrations.tasks.sweep_connections"]


def test_the_sweep_replaces_a_kick_that_waited_too_long_to_be_anything_but_lost(busy_connections, broker):
    import time

    from integrations.kicks import KICK_LOST_AFTER_SECONDS, kick_pending_key

    connection = busy_connections[0]
    assert len(connections_sweep()) == 20
    broker.flushdb()  # the broker lost its queue, but the cache (elsewhere) kept the marks
    assert connections_sweep() == []
    cache.set(kick_pending_key(connection.pk, 2), time.time() - KICK_LOST_AFTER_SECONDS - 1, timeout=300)
    assert connections_sweep() == [(connection.pk, 2)] and queued(broker) == 1
    assert connection_kick(connection.pk, 2) is False, "a kick from a change still respects the fresh mark"
