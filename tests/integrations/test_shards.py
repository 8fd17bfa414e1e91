"""Sharded drains: a connection's backlog is split by user, each shard drained on its own, in parallel on several
workers, without reordering any user's records; the audience's deletion record still comes last."""

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from audiences.services import audience_delete
from integrations.connections import connection_pause, connection_resume, connection_resync
from integrations.delivery import connection_drain, connections_sweep
from integrations.delivery.lease import lease_acquire
from integrations.layout import ReshardTimeout, delivery_layout, delivery_shard_count, delivery_shards_change
from integrations.models import Delivery, DeliveryLayout, DrainLease
from integrations.outbox import OUTBOX

from ..factories import apply, join, leave
from ..support.drains import drain

SHARDS = 4


@pytest.fixture(autouse=True)
def four_shards(delivery_shards):
    delivery_shards(SHARDS)


def user_pk(external_id: str) -> int:
    from audiences.models import User

    return User.objects.get(external_id=external_id).pk


def test_each_user_stays_in_one_shard_and_each_shard_sends_only_its_users(connection, audience, stream):
    drain(connection)
    connection_pause(connection=connection)
    for round_ in range(3):
        apply(audience, *[join(f"u{n}", 100 + 2 * round_, CustomerId=f"c{n}-{round_}") for n in range(12)])
        apply(audience, *[leave(f"u{n}", 101 + 2 * round_) for n in range(12)])
    connection_resume(connection=connection)
    shards_of_users = {
        user_id: set(Delivery.objects.filter(connection=connection, user_id=user_id).values_list("shard", flat=True))
        for user_id in Delivery.objects.filter(connection=connection).values_list("user_id", flat=True)
    }
    assert all(shards == {user_id % SHARDS} for user_id, shards in shards_of_users.items())
    assert {shard for shards in shards_of_users.values() for shard in shards} == set(range(SHARDS))

    sent_by_shard: dict[int, set[str]] = {}
    for shard in (2, 0, 3, 1):
        before = len(stream.records())
        report = connection_drain(connection.pk, shard, time_budget=30)
        assert report.delivered == 6 * sum(1 for n in range(12) if user_pk(f"u{n}") % SHARDS == shard)
        sent_by_shard[shard] = {
            record["UserIdentities"].get("CustomerId", "").split("-")[0] for record in stream.records()[before:]
        }
    for shard, customers in sent_by_shard.items():
        assert customers == {f"c{n}" for n in range(12) if user_pk(f"u{n}") % SHARDS == shard}

    # Per user: join, leave, join, leave, join, leave, in the order of that user's changes.
    by_user: dict[str, list[tuple[str, bool]]] = {}
    for record in stream.records():
        identities = record["UserIdentities"]
        by_user.setdefault(identities["CustomerId"].split("-")[0], []).append(
            (record["MembershipChangedTimestamp"], record["IsMember"])
        )
    for sequence in by_user.values():
        assert sequence == [(str(100 + i), i % 2 == 0) for i in range(6)]


def test_a_shard_with_a_live_lease_is_skipped_while_other_shards_drain(connection, audience, stream):
    drain(connection)
    apply(audience, *[join(f"u{n}", 100, CustomerId=f"c{n}") for n in range(8)])
    assert lease_acquire(connection.pk, 1) is not None  # another worker is draining shard 1
    busy = connection_drain(connection.pk, 1, time_budget=30)
    free = connection_drain(connection.pk, 2, time_budget=30)
    assert not busy.leased and busy.delivered == 0
    assert free.leased and free.delivered == 2
    assert Delivery.objects.filter(connection=connection, shard=1, status=Delivery.Status.PENDING).count() == 2


def test_the_audience_deletion_record_waits_for_the_other_shards(connection, audience, stream):
    drain(connection)
    apply(audience, *[join(f"u{n}", 100, CustomerId=f"c{n}") for n in range(8)])
    audience_delete(audience=audience, outbox=OUTBOX)
    deletion = Delivery.objects.get(connection=connection, kind=Delivery.Kind.AUDIENCE_DELETED)
    assert deletion.shard == 0

    first = connection_drain(connection.pk, 0, time_budget=30)
    assert first.delivered == 2  # shard 0's members, not the deletion record
    assert not first.more_work  # it waits for the sweep, without spinning
    assert Delivery.objects.get(pk=deletion.pk).status == Delivery.Status.PENDING
    for shard in (1, 2, 3):
        connection_drain(connection.pk, shard, time_budget=30)
    last = connection_drain(connection.pk, 0, time_budget=30)
    assert last.delivered == 1
    records = stream.records()
    assert len(records) == 9 and records[-1]["AudienceDeleted"] is True


def test_a_resync_queues_pages_across_shards_and_sends_each_member_once(connection, audience, stream):
    apply(audience, *[join(f"u{n}", 100, CustomerId=f"c{n}") for n in range(40)])
    apply(audience, *[leave(f"u{n}", 101) for n in range(0, 40, 5)])  # 32 members left
    drain(connection)
    before = len(stream.records())
    connection_resync(connection=connection)
    drain(connection)
    resync = stream.records()[before:]
    assert sorted(record["UserIdentities"]["CustomerId"] for record in resync) == sorted(
        f"c{n}" for n in range(40) if n % 5
    )
    assert all(record["IsMember"] is True for record in resync)
    connection.refresh_from_db()
    assert connection.resync_cursor is None and connection.resync_queued == 32
    queued = Delivery.objects.filter(connection=connection, kind=Delivery.Kind.RESYNC)
    assert {shard for shard in queued.values_list("shard", flat=True)} == set(range(SHARDS))
    assert all(user_id % SHARDS == shard for user_id, shard in queued.values_list("user_id", "shard"))


def test_a_drain_starts_after_what_its_shard_already_settled(connection, audience, stream):
    from integrations.models import DrainLease

    drain(connection)
    apply(audience, *[join(f"u{n}", 100, CustomerId=f"c{n}") for n in range(8)])
    drain(connection)
    for shard in range(SHARDS):
        last = Delivery.objects.filter(connection=connection, shard=shard).order_by("-pk").values_list("pk").first()
        assert DrainLease.objects.get(connection=connection, shard=shard).claimed_through == last[0]
    apply(audience, *[leave(f"u{n}", 101) for n in range(8)])
    drain(connection)
    assert [record["IsMember"] for record in stream.records()] == [True] * 8 + [False] * 8


@pytest.mark.django_db(transaction=True)
def test_queueing_deliveries_waits_for_the_transaction_that_queues_on_the_same_connection(connection, audience):
    """Deliveries of one connection become visible in id order, which lets a drain start after its last batch."""
    import threading

    from django.db import connection as db_connection
    from django.db import transaction

    from integrations.outbox import deliveries_insert_lock

    if db_connection.vendor != "postgresql":
        pytest.skip("PostgreSQL advisory locks; SQLite runs one writing transaction at a time")
    holding, release = threading.Event(), threading.Event()

    def other_transaction() -> None:
        with transaction.atomic():
            deliveries_insert_lock([connection.pk])
            holding.set()
            release.wait(10)
        db_connection.close()

    def apply_changes() -> None:
        apply(audience, join("late", 100, CustomerId="late"))
        db_connection.close()

    other = threading.Thread(target=other_transaction)
    other.start()
    assert holding.wait(10)
    applying = threading.Thread(target=apply_changes)
    applying.start()
    applying.join(0.5)
    assert applying.is_alive(), "queued deliveries while another transaction held the connection"
    release.set()
    other.join(10)
    applying.join(10)
    assert not applying.is_alive()
    assert Delivery.objects.filter(connection=connection, user__external_id="late").count() == 1


def test_shards_failing_together_fault_the_connection_once(connection):
    """Each shard's drain counts the failures it saw; the one that faults the connection raises the alert, the others
    (which read the connection before it was faulted) do not raise it again."""
    from integrations.delivery.settle import fault
    from integrations.models import Connection, SystemAlert

    for _ in range(SHARDS):
        fault(connection, SystemAlert.Type.RETRY_LIMIT_EXCEEDED, "Gave up.")
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED
    assert SystemAlert.objects.get(connection=connection, type=SystemAlert.Type.RETRY_LIMIT_EXCEEDED).count == 1


def drain_as_the_sweep_says() -> int:
    """What the workers do: drain every (connection, shard) the sweep kicks, until it kicks nothing."""
    from django.core.cache import cache

    delivered = 0
    for _ in range(20):
        kicked = connections_sweep()
        cache.clear()  # each kick was taken by a worker
        if not kicked:
            return delivered
        delivered += sum(connection_drain(connection_id, shard).delivered for connection_id, shard in kicked)
    raise AssertionError("the sweep kept kicking")


def test_a_process_started_with_another_shard_count_strands_no_row(connection, audience, stream, settings):
    drain(connection)
    connection_pause(connection=connection)
    apply(audience, *[join(f"u{n}", 100, CustomerId=f"c{n}") for n in range(12)])
    settings.DELIVERY_SHARDS = 2  # restarted with a new value, before any migrate
    apply(audience, *[leave(f"u{n}", 101) for n in range(12)])
    connection_resume(connection=connection)
    assert drain_as_the_sweep_says() == 24
    assert not Delivery.objects.filter(connection=connection, status=Delivery.Status.PENDING).exists()


def test_resharding_moves_the_backlog_and_keeps_each_users_order(connection, audience, stream, settings):
    drain(connection)
    connection_pause(connection=connection)
    for round_ in range(3):
        apply(audience, *[join(f"u{n}", 100 + 2 * round_, CustomerId=f"c{n}-{round_}") for n in range(12)])
        apply(audience, *[leave(f"u{n}", 101 + 2 * round_) for n in range(12)])
    connection_drain(connection.pk, 1)  # paused: takes and gives back its lease, leaving claimed_through behind
    call_command("reshard_deliveries", "3", stdout=io.StringIO())
    pending = Delivery.objects.filter(connection=connection, status=Delivery.Status.PENDING)
    assert pending.count() == 72
    assert all(shard == user_id % 3 for user_id, shard in pending.values_list("user_id", "shard"))
    connection_resume(connection=connection)
    assert drain_as_the_sweep_says() == 72
    by_user: dict[str, list[tuple[str, bool]]] = {}
    for record in stream.records():
        by_user.setdefault(record["UserIdentities"]["CustomerId"].split("-")[0], []).append(
            (record["MembershipChangedTimestamp"], record["IsMember"])
        )
    assert all(sequence == [(str(100 + i), i % 2 == 0) for i in range(6)] for sequence in by_user.values())
    assert len(by_user) == 12


def test_migrate_applies_a_changed_delivery_shards(connection, audience, settings):
    connection_pause(connection=connection)
    apply(audience, *[join(f"u{n}", 100, CustomerId=f"c{n}") for n in range(8)])
    settings.DELIVERY_SHARDS = 2
    call_command("migrate", verbosity=0)
    assert delivery_shard_count() == 2
    assert set(Delivery.objects.filter(connection=connection).values_list("shard", flat=True)) == {0, 1}


def test_resharding_waits_for_running_drains_and_gives_up_without_moving_anything(connection, audience):
    connection_pause(connection=connection)
    apply(audience, *[join(f"u{n}", 100, CustomerId=f"c{n}") for n in range(8)])
    before = sorted(Delivery.objects.values_list("pk", "shard"))
    DrainLease.objects.create(
        connection=connection, shard=2, token="busy", expires_at=timezone.now() + timedelta(seconds=30)
    )
    with pytest.raises(ReshardTimeout):
        delivery_shards_change(count=2, wait_seconds=0.3)
    assert sorted(Delivery.objects.values_list("pk", "shard")) == before and delivery_shard_count() == SHARDS
    assert delivery_layout().changing_to is None


def test_no_drain_starts_while_the_shards_change(connection):
    DeliveryLayout.objects.filter(pk=1).update(changing_to=2)
    assert connection_drain(connection.pk, 0).leased is False
