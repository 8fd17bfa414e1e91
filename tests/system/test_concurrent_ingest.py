"""Batches of changes for one audience run side by side on PostgreSQL; deleting the audience waits for them, and
no batch is applied after the deletion."""

import threading
from collections.abc import Callable

import pytest
from django.db import connection as db_connection
from django.db import transaction

from audiences.services import AudienceDeleted, audience_delete
from integrations.models import Delivery

from ..conftest import apply, join, leave

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def postgresql_only():
    if db_connection.vendor != "postgresql":
        pytest.skip("row locks: SQLite runs one writing transaction at a time")


def in_open_transaction(work: Callable[[], None]) -> tuple[threading.Thread, threading.Event]:
    """Run `work` in a thread's transaction, and keep that transaction open until the returned event is set."""
    done, release = threading.Event(), threading.Event()

    def run() -> None:
        with transaction.atomic():
            work()
            done.set()
            release.wait(10)
        db_connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    assert done.wait(10)
    return thread, release


def in_thread(work: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            errors.append(error)
        finally:
            db_connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_the_audience_lock_of_a_batch_does_not_hold_up_another_batch(audience):
    # The first batch changes nothing (a leave for a non-member): it holds only the locks it took to read.
    first, release = in_open_transaction(lambda: apply(audience, leave("x", 100)))
    second, errors = in_thread(lambda: apply(audience, join("b", 100, CustomerId="b")))
    second.join(5)
    finished_while_first_open = not second.is_alive()
    release.set()
    first.join(10)
    second.join(10)
    assert finished_while_first_open and not errors
    audience.refresh_from_db()
    assert audience.member_count == 1


def test_deleting_the_audience_waits_for_an_open_batch_and_later_batches_are_refused(connection, audience):
    batch, release = in_open_transaction(lambda: apply(audience, join("a", 100, CustomerId="a")))
    deletion, errors = in_thread(lambda: audience_delete(audience=audience))
    deletion.join(0.5)
    assert deletion.is_alive(), "the deletion did not wait for the batch being applied"
    release.set()
    batch.join(10)
    deletion.join(10)
    assert not deletion.is_alive() and not errors
    with pytest.raises(AudienceDeleted):
        apply(audience, join("b", 101, CustomerId="b"))
    kinds = list(Delivery.objects.filter(connection=connection).order_by("id").values_list("kind", flat=True))
    assert kinds[-1] == Delivery.Kind.AUDIENCE_DELETED and kinds.count(Delivery.Kind.CHANGE) == 1


def test_an_identity_change_waits_for_a_deletion_of_another_audience_and_skips_it(make_connection, audience):
    from audiences.services import audience_create, user_identities_update

    other = audience_create(internal_name="Other")
    other_connection = make_connection(audience=other, stream_name="other-stream")
    apply(audience, join("u", 100, CustomerId="old"))
    apply(other, join("u", 100, CustomerId="old"))
    deletion, release = in_open_transaction(lambda: audience_delete(audience=other))
    update, errors = in_thread(lambda: user_identities_update(user_id="u", identities={"CustomerId": "new"}))
    update.join(0.5)
    waited = update.is_alive()
    release.set()
    deletion.join(10)
    update.join(10)
    assert waited and not errors
    kinds = list(Delivery.objects.filter(connection=other_connection).order_by("id").values_list("kind", flat=True))
    assert kinds == [Delivery.Kind.CHANGE, Delivery.Kind.AUDIENCE_DELETED], "nothing after the deletion record"
