"""The batch write of membership changes (audiences.services): hand-written SQL on PostgreSQL, the ORM elsewhere.

Both must leave the same rows behind; these tests read them back after real writes, on whichever database runs.
"""

import pytest
from django.db import connection as db
from django.utils import timezone

from audiences.models import Audience, Membership, MembershipChange, User
from audiences.services import audience_create, user_identities_update
from integrations.models import Delivery
from integrations.outbox import OUTBOX

from ..factories import apply, join, leave

JOINED, LEFT, IDENTITIES_CHANGED = (
    MembershipChange.Kind.JOINED,
    MembershipChange.Kind.LEFT,
    MembershipChange.Kind.IDENTITIES_CHANGED,
)

AWKWARD_TEXT = ['q"uote', "com,ma", "back\\slash", "{brace}", "sp ace", "NULL", "é-ü", "😀", '{"json": [1]}', "'"]


def stored_text(model, column: str, pk: int) -> str:
    """A column as PostgreSQL or SQLite holds it, not as the model field parses it."""
    with db.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {model._meta.db_table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def changes_of(audience: Audience) -> list[tuple]:
    return list(
        MembershipChange.objects.filter(audience=audience)
        .order_by("pk")
        .values_list("user__external_id", "kind", "timestamp", "identities", "previous_identities")
    )


def test_change_ids_follow_the_order_of_the_changes_and_so_do_each_users_deliveries(connection, audience):
    changes = [
        join("b", 100, CustomerId="b1"),
        join("a", 100, CustomerId="a1"),
        leave("b", 101),
        join("b", 102, CustomerId="b2"),
        join("a", 103, CustomerId="a2"),
        leave("a", 104),
    ]
    result = apply(audience, *changes)

    assert result.accepted == 6
    assert result.change_ids == sorted(result.change_ids)
    assert list(MembershipChange.objects.filter(audience=audience).order_by("pk").values_list("pk", flat=True)) == (
        result.change_ids
    )
    assert [(user, kind, timestamp) for user, kind, timestamp, *_ in changes_of(audience)] == [
        ("b", JOINED, 100),
        ("a", JOINED, 100),
        ("b", LEFT, 101),
        ("b", JOINED, 102),
        ("a", IDENTITIES_CHANGED, 103),
        ("a", LEFT, 104),
    ]
    for user_id in ("a", "b"):
        deliveries = list(
            Delivery.objects.filter(connection=connection, user__external_id=user_id)
            .order_by("pk")
            .values_list("change_id", "timestamp", "is_member", "uses_previous_identities")
        )
        assert [change_id for change_id, *_ in deliveries] == sorted(change_id for change_id, *_ in deliveries)
        assert [timestamp for _, timestamp, *_ in deliveries] == sorted(timestamp for _, timestamp, *_ in deliveries)
    assert list(
        Delivery.objects.filter(connection=connection, user__external_id="a")
        .order_by("pk")
        .values_list("timestamp", "is_member", "uses_previous_identities")
    ) == [(100, True, False), (103, False, True), (103, True, False), (104, False, False)]


def test_user_ids_and_identities_are_stored_exactly_as_given(audience):
    identities = {"Email": "x", **{f"Other{n}": text for n, text in enumerate(AWKWARD_TEXT, start=2) if n <= 10}}
    changes = [join(f"user {text}", 100, **identities) for text in AWKWARD_TEXT]

    result = apply(audience, *changes)

    assert result.accepted == len(AWKWARD_TEXT)
    users = {user.external_id: user for user in User.objects.all()}
    assert set(users) == {f"user {text}" for text in AWKWARD_TEXT}
    for user in users.values():
        assert list(user.identities.items()) == list(identities.items())
    change = MembershipChange.objects.filter(audience=audience).first()
    text = stored_text(MembershipChange, "identities", change.pk)
    assert text == stored_text(User, "identities", change.user_id)
    assert text.startswith('{"Email": "x", "Other2": "q\\"uote", "Other3": "com,ma"')
    assert "é-ü" in text and "😀" in text
    assert stored_text(MembershipChange, "previous_identities", change.pk) is None


def test_the_first_change_of_a_new_user_creates_it_and_a_later_one_in_the_batch_changes_its_identities(audience):
    result = apply(
        audience,
        join("new", 100, CustomerId="first"),
        leave("anonymous", 100),
        join("new", 101, Email="second@example.com", CustomerId="second"),
        join("anonymous", 102),
    )

    assert (result.accepted, result.ignored) == (3, 1)
    assert changes_of(audience) == [
        ("new", JOINED, 100, {"CustomerId": "first"}, None),
        (
            "new",
            IDENTITIES_CHANGED,
            101,
            {"Email": "second@example.com", "CustomerId": "second"},
            {"CustomerId": "first"},
        ),
        ("anonymous", JOINED, 102, {}, None),
    ]
    assert User.objects.get(external_id="new").identities == {"Email": "second@example.com", "CustomerId": "second"}
    assert User.objects.get(external_id="anonymous").identities == {}
    audience.refresh_from_db()
    assert audience.member_count == 2


def test_identities_in_another_key_order_are_the_same_identities(audience):
    apply(audience, join("u1", 100, CustomerId="c1", Email="e1"))

    result = apply(audience, join("u1", 101, Email="e1", CustomerId="c1"))

    assert (result.accepted, result.ignored) == (0, 1)
    user = User.objects.get(external_id="u1")
    assert stored_text(User, "identities", user.pk) == '{"CustomerId": "c1", "Email": "e1"}'


def test_new_identities_reach_every_live_audience_of_the_user_within_the_batch(connection, audience):
    other, deleted = audience_create(internal_name="other"), audience_create(internal_name="deleted")
    apply(other, join("u1", 500, CustomerId="c1"), join("u2", 500, CustomerId="d1"))
    apply(deleted, join("u1", 500, CustomerId="c1"))
    Audience.objects.filter(pk=deleted.pk).update(deleted_at=timezone.now())

    result = apply(audience, join("u1", 100, CustomerId="c2"), leave("u2", 101, CustomerId="d2"))

    assert (result.accepted, result.ignored) == (1, 1)  # a remove of a non-member changes nothing, identities neither
    assert changes_of(other)[2:] == [("u1", IDENTITIES_CHANGED, 100, {"CustomerId": "c2"}, {"CustomerId": "c1"})]
    assert changes_of(audience) == [("u1", JOINED, 100, {"CustomerId": "c2"}, None)]
    assert len(changes_of(deleted)) == 1
    assert User.objects.get(external_id="u2").identities == {"CustomerId": "d1"}
    # The other audience's membership keeps its newer timestamp; its member count does not move.
    assert Membership.objects.get(audience=other, user__external_id="u1").last_changed_timestamp == 500
    other.refresh_from_db()
    assert other.member_count == 2
    assert list(
        Delivery.objects.filter(connection=connection).order_by("pk").values_list("user__external_id", "is_member")
    ) == [("u1", True)]


def test_put_user_writes_one_identity_change_per_membership_in_audience_order(audience):
    audiences = [audience, audience_create(internal_name="second"), audience_create(internal_name="third")]
    for each in reversed(audiences):
        apply(each, join("u1", 100, CustomerId="c1"))
    apply(audiences[1], leave("u1", 101))

    user = user_identities_update(user_id="u1", identities={"CustomerId": "c2"}, outbox=OUTBOX)

    assert user.identities == {"CustomerId": "c2"}
    changed = MembershipChange.objects.filter(kind=IDENTITIES_CHANGED).order_by("pk")
    assert [change.audience_id for change in changed] == [audiences[2].pk, audiences[0].pk]  # memberships' order
    assert {(change.previous_identities["CustomerId"], change.identities["CustomerId"]) for change in changed} == {
        ("c1", "c2")
    }


def test_counters_move_by_the_joins_leaves_and_stale_changes_of_a_batch(audience):
    apply(audience, *(join(f"u{n}", 100) for n in range(5)))

    result = apply(
        audience,
        leave("u0", 101),
        leave("u1", 99),  # stale
        join("u5", 100),
        leave("u5", 101),
        leave("u5", 50),  # stale
        join("u6", 101),
        join("u2", 102),  # already a member: no-op
    )

    assert (result.accepted, result.ignored, result.stale) == (4, 3, 2)
    audience.refresh_from_db()
    assert (audience.member_count, audience.stale_change_count) == (5, 2)
    assert set(
        Membership.objects.filter(audience=audience, is_member=True).values_list("user__external_id", flat=True)
    ) == {"u1", "u2", "u3", "u4", "u6"}
    assert Membership.objects.get(audience=audience, user__external_id="u5").last_changed_timestamp == 101


@pytest.mark.parametrize("size", [1, 10_000])
def test_a_batch_of_any_size_is_written_in_one_go(api, audience, size):
    changes = [
        {"user_id": f"user-{n}", "is_member": True, "identities": {"CustomerId": f"c-{n}"}, "timestamp": 100}
        for n in range(size)
    ]

    response = api.post(f"/api/v1/audiences/{audience.pk}/changes", {"changes": changes}, format="json")

    assert response.status_code == 202
    assert response.json() == {"accepted": size, "ignored": 0}
    assert MembershipChange.objects.filter(audience=audience).count() == size
    last = MembershipChange.objects.filter(audience=audience).order_by("pk").last()
    assert (last.user.external_id, last.identities) == (f"user-{size - 1}", {"CustomerId": f"c-{size - 1}"})
