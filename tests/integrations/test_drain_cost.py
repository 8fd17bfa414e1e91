"""The drain's cost per batch does not grow with the backlog: the same queries per batch, and an index scan that
starts at the head of the connection's backlog."""

import pytest
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext

from audiences.services import ChangeIn, membership_changes_apply
from integrations.connections import connection_pause, connection_resume
from integrations.delivery import connection_drain
from integrations.layout import delivery_shard_count
from integrations.models import Delivery
from integrations.outbox import OUTBOX

from ..support.drains import drain


def queue(audience, count: int, offset: int) -> None:
    changes = [
        ChangeIn(user_id=f"user-{n}", is_member=True, identities={"CustomerId": f"c{n}"})
        for n in range(offset, offset + count)
    ]
    membership_changes_apply(audience=audience, changes=changes, outbox=OUTBOX)


def queries_to_drain(connection, audience, backlog: int, offset: int) -> tuple[int, int]:
    """Queries and batches to drain `backlog` new members, shard by shard."""
    connection_pause(connection=connection)
    queue(audience, backlog, offset)
    connection_resume(connection=connection)
    queries = batches = delivered = 0
    for shard in range(delivery_shard_count()):
        with CaptureQueriesContext(db_connection) as captured:
            report = connection_drain(connection.pk, shard, time_budget=60)
        queries += len(captured)
        batches += report.batches
        delivered += report.delivered
    assert delivered == backlog
    return queries, batches


def test_queries_per_batch_stay_constant_as_the_backlog_grows(connection, audience, stream):
    drain(connection)  # the (empty) initial sync
    shards = delivery_shard_count()
    sizes = [shards * 250, shards * 750, shards * 1250]  # 1, 2 and 3 full-ish batches per shard
    small, small_batches = queries_to_drain(connection, audience, sizes[0], 0)
    medium, medium_batches = queries_to_drain(connection, audience, sizes[1], 100_000)
    large, large_batches = queries_to_drain(connection, audience, sizes[2], 200_000)
    assert (small_batches, medium_batches, large_batches) == (shards, 2 * shards, 3 * shards)
    assert large - medium == medium - small, (small, medium, large)
    assert (medium - small) / shards <= 8, "queries per batch"


def test_the_backlog_query_starts_from_the_partial_index(make_connection, connection, audience, stream):
    if db_connection.vendor != "postgresql":
        pytest.skip("reads PostgreSQL's query plan")
    other = make_connection(stream_name="other-stream")
    connection_pause(connection=connection)
    queue(audience, 5000, 0)
    Delivery.objects.filter(connection=other).update(status=Delivery.Status.DELIVERED)
    with db_connection.cursor() as cursor:
        cursor.execute("ANALYZE integrations_delivery")
    plan = (
        Delivery.objects.filter(connection=connection, shard=1, status=Delivery.Status.PENDING, pk__gt=1000)
        .order_by("id")
        .values_list("pk")[:500]
        .explain()
    )
    assert "delivery_backlog_idx" in plan, plan


def test_the_any_lookup_matches_exactly_the_given_values(connection, audience):
    connection_pause(connection=connection)
    queue(audience, 5, 0)
    ids = list(Delivery.objects.filter(connection=connection).order_by("id").values_list("pk", flat=True))
    assert set(Delivery.objects.filter(pk__any=ids[1:4]).values_list("pk", flat=True)) == set(ids[1:4])
    assert not Delivery.objects.filter(pk__any=[]).exists()
    assert Delivery.objects.filter(pk__any=ids[:2]).update(status=Delivery.Status.DELIVERED) == 2
