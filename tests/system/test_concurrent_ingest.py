"""Batches of changes for one audience run side by side on PostgreSQL; deleting the audience waits for them, and
no batch is applied after the deletion."""

import pytest

from audiences.services import AudienceDeleted, audience_delete
from integrations.models import Delivery
from integrations.outbox import OUTBOX

from ..factories import apply, join, leave
from ..support.threads import in_open_transaction, in_thread

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("postgresql_only")]


def test_the_audience_lock_of_a_batch_does_not_hold_up_another_batch(audience):
    # The first batch changes nothing (a leave for a non-member): it holds only the locks it took to read.
    first, release = in_open_transaction(lambda: apply(audience, leave("x", 100)), release_timeout=10)
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
    batch, release = in_open_transaction(lambda: apply(audience, join("a", 100, CustomerId="a")), release_timeout=10)
    deletion, errors = in_thread(lambda: audience_delete(audience=audience, outbox=OUTBOX))
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
    deletion, release = in_open_transaction(lambda: audience_delete(audience=other, outbox=OUTBOX), release_timeout=10)
    update, errors = in_thread(
        lambda: user_identities_update(user_id="u", identities={"CustomerId": "new"}, outbox=OUTBOX)
    )
    update.join(0.5)
    waited = update.is_alive()
    release.set()
    deletion.join(10)
    update.join(10)
    assert waited and not errors
    kinds = list(Delivery.objects.filter(connection=other_connection).order_by("id").values_list("kind", flat=True))
    assert kinds == [Delivery.Kind.CHANGE, Delivery.Kind.AUDIENCE_DELETED], "nothing after the deletion record"
