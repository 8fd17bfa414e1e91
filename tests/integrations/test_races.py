"""Races between concurrent writers on PostgreSQL, each forced by holding a real lock or transaction open: a
connection created during a batch, batches holding the same new users, an audience's deletion against a resync
page, a Resume during a failing request, and a lock held too long by someone else (503)."""

import threading

import pytest
from django.db import connection as db_connection
from rest_framework.test import APIClient

from audiences.models import Audience, Membership, User
from audiences.services import audience_delete
from integrations.connections import connection_resume
from integrations.delivery import connection_drain
from integrations.models import Connection, Delivery
from integrations.outbox import OUTBOX, deliveries_insert_lock

from ..factories import apply, join, leave, members
from ..support.drains import drain
from ..support.emulator import EmulatedStream, ServiceUnavailable, customer_ids, firehose_behaviour
from ..support.threads import in_open_transaction, in_thread

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("postgresql_only")]


def sessions_waiting_for_a_lock() -> int:
    with db_connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def wait_for_waiters(count: int) -> None:
    import time

    deadline = time.monotonic() + 10
    while sessions_waiting_for_a_lock() < count:
        assert time.monotonic() < deadline, f"{count} sessions never waited for a lock"
        time.sleep(0.02)


def test_a_connection_created_while_a_batch_is_open_gets_that_batchs_changes(make_connection, audience, aws):
    make_connection()
    other = EmulatedStream(name="second-stream", bucket="second-records").create()
    batch, release = in_open_transaction(lambda: apply(audience, join("late", 100, CustomerId="late")))
    created: list[Connection] = []
    creation, errors = in_thread(lambda: created.append(make_connection(stream_name=other.name)))
    creation.join(0.5)
    waited = creation.is_alive()
    release.set()
    batch.join(10)
    creation.join(10)
    assert not errors
    drain(created[0])
    assert customer_ids(other.records()) == ["late"]
    assert waited, "the connection was created between two batches, not during one"


def test_every_member_of_the_audience_when_a_connection_is_created_reaches_it(make_connection, audience, aws):
    members(audience, 3)
    other = EmulatedStream(name="second-stream", bucket="second-records").create()
    batch, release = in_open_transaction(lambda: apply(audience, join("late", CustomerId="late")))
    created: list[Connection] = []
    creation, errors = in_thread(lambda: created.append(make_connection(stream_name=other.name)))
    wait_for_waiters(1)
    release.set()
    batch.join(10)
    creation.join(10)
    assert not errors
    apply(audience, join("later", CustomerId="later"))
    drain(created[0])
    assert sorted(customer_ids(other.records())) == ["late", "later", "user-0", "user-1", "user-2"]


def test_a_connection_cannot_be_created_for_an_audience_deleted_meanwhile(make_connection, audience):
    from django.core.exceptions import ValidationError

    deletion, release = in_open_transaction(lambda: audience_delete(audience=audience, outbox=OUTBOX))
    creation, errors = in_thread(lambda: make_connection())
    wait_for_waiters(1)
    release.set()
    deletion.join(10)
    creation.join(10)
    assert [type(error) for error in errors] == [ValidationError]
    assert "was deleted" in str(errors[0]) and not Connection.objects.exists()


def test_batches_with_the_same_new_users_in_opposite_orders_all_succeed(api, audience, connection):
    answers: list[int] = []

    def send(user_ids: list[str], barrier: threading.Barrier) -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=api._credentials["HTTP_AUTHORIZATION"])
        changes = [
            {"user_id": user_id, "is_member": True, "identities": {"CustomerId": user_id}} for user_id in user_ids
        ]
        barrier.wait()
        answers.append(client.post(f"/api/v1/audiences/{audience.pk}/changes", {"changes": changes}, format="json")
                       .status_code)  # fmt: skip

    for round_ in range(5):
        user_ids = [f"r{round_}-{n}" for n in range(400)]
        barrier = threading.Barrier(2)
        threads = [in_thread(lambda ids=ids, b=barrier: send(ids, b))[0] for ids in (user_ids, user_ids[::-1])]
        for thread in threads:
            thread.join(60)
    assert answers == [202] * 10
    assert User.objects.count() == 2000
    audience.refresh_from_db()
    assert audience.member_count == Membership.objects.filter(audience=audience, is_member=True).count() == 2000


def test_a_batch_that_cannot_get_its_locks_answers_503_with_retry_after_and_stores_nothing(api, audience, settings):
    apply(audience, join("held", 100, CustomerId="held"))
    settings.DATABASE_LOCK_TIMEOUT_SECONDS = 0.2

    def hold_the_user_row() -> None:  # an operator's statement run by hand, left open
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM audiences_user WHERE external_id = 'held' FOR UPDATE")

    holder, release = in_open_transaction(hold_the_user_row)
    try:
        response = api.post(
            f"/api/v1/audiences/{audience.pk}/changes",
            {"changes": [{"user_id": "new", "is_member": True}, {"user_id": "held", "is_member": False}]},
            format="json",
        )
    finally:
        release.set()
        holder.join(10)
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert response.json()["errors"][0]["message"].startswith("Too many concurrent changes")
    assert not User.objects.filter(external_id="new").exists()
    assert Membership.objects.get(user__external_id="held").is_member


def test_an_audience_deletion_and_a_resync_page_of_its_connection_do_not_deadlock(make_connection, audience):
    members(audience, 3)
    connection = make_connection()  # its initial sync is queued page by page by the drains
    # Something holds the connection's queue lock (another page being queued, say): the deletion and the page both
    # wait for it, the deletion first.
    holder, release = in_open_transaction(lambda: deliveries_insert_lock([connection.pk]))
    deletion, deletion_errors = in_thread(
        lambda: audience_delete(audience=Audience.objects.get(pk=audience.pk), outbox=OUTBOX)
    )
    wait_for_waiters(1)
    page, page_errors = in_thread(lambda: connection_drain(connection.pk, 0, time_budget=5))
    wait_for_waiters(2)
    release.set()
    for thread in (holder, deletion, page):
        thread.join(20)
    assert deletion_errors == [] and page_errors == []
    kinds = list(Delivery.objects.filter(connection=connection).order_by("pk").values_list("kind", flat=True))
    assert kinds[-1] == Delivery.Kind.AUDIENCE_DELETED


def test_a_resume_during_a_failing_request_gives_a_fresh_retry_budget(connection, audience, monkeypatch, settings):
    drain(connection)
    apply(audience, join("u1", CustomerId="c1"))
    # The connection has used up its retries, and the drain reads it so; the operator resumes it while the
    # request is in flight, then that request fails.
    Connection.objects.filter(pk=connection.pk).update(consecutive_failures=settings.FIREHOSE_RETRY_LIMIT)

    def resumed_then_throttled(original, name, records):
        connection_resume(connection=Connection.objects.get(pk=connection.pk))
        raise ServiceUnavailable()

    with firehose_behaviour(monkeypatch, resumed_then_throttled):
        connection_drain(connection.pk, 0, time_budget=5)
    connection.refresh_from_db()
    assert connection.status == Connection.Status.ACTIVE
    assert connection.consecutive_failures == 1


def test_a_batch_that_waited_for_a_users_lock_sees_what_the_other_batch_committed(connection, audience):
    apply(audience, leave("u", 50))  # the user exists (a leave of a non-member: nothing else is stored)
    first, release = in_open_transaction(lambda: apply(audience, join("u", 100, CustomerId="c")))
    second, errors = in_thread(lambda: apply(audience, join("u", 101, CustomerId="c")))  # the same member again
    wait_for_waiters(1)
    release.set()
    first.join(10)
    second.join(10)
    assert errors == []
    audience.refresh_from_db()
    assert audience.member_count == 1 == Membership.objects.filter(audience=audience, is_member=True).count()
    joins = Delivery.objects.filter(connection=connection, kind=Delivery.Kind.CHANGE, is_member=True)
    assert joins.count() == 1, "the second join was a no-op, not a second join"
