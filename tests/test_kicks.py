"""Kicks: at most one waits in the broker per shard, so a burst of API calls does not bury the workers in no-op
drain tasks; the sweep respects that mark too (it replaces a kick only once the waiting one could have expired)."""

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


def test_one_kick_waits_per_shard_until_a_drain_takes_it(connection, broker, delivery_shards):
    delivery_shards(2)
    connection_kick(connection.pk)
    connection_kick(connection.pk)
    connection_kick(connection.pk, 1)
    assert queued(broker) == 2  # one per shard

    kick_taken(connection.pk, 1)  # a worker started draining shard 1: a new change needs a new kick
    connection_kick(connection.pk)
    assert queued(broker) == 3
