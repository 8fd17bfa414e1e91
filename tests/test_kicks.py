"""Kicks: at most one waits in the broker per shard, so a burst of API calls does not bury the workers in no-op
drain tasks; the sweep and a drain that ran out of time kick past that mark."""

import pytest
import redis
from django.core.cache import cache

from integrations.services import connection_kick, kick_taken


@pytest.fixture
def broker(settings):
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    cache.clear()
    yield client
    client.flushdb()


def queued(broker) -> int:
    return broker.llen("celery")


def test_one_kick_waits_per_shard_until_a_drain_takes_it(connection, broker, settings):
    settings.DELIVERY_SHARDS = 2
    connection_kick(connection.pk)
    connection_kick(connection.pk)
    connection_kick(connection.pk, 1)
    assert queued(broker) == 2  # one per shard

    kick_taken(connection.pk, 1)  # a worker started draining shard 1: a new change needs a new kick
    connection_kick(connection.pk)
    assert queued(broker) == 3

    connection_kick(connection.pk, 0, force=True)  # the sweep: the waiting kick may have been lost
    assert queued(broker) == 4
