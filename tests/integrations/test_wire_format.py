"""What reaches the stream, decoded from the emulated S3 destination, against the contract (sections 1, 2, 4)."""

import json

import pytest

from audiences.models import Audience
from audiences.services import audience_delete, audience_update, user_identities_update
from integrations.configurations import configuration_update
from integrations.models import Delivery
from integrations.outbox import OUTBOX

from ..factories import apply, join, leave
from ..support.drains import drain

SEED_IDENTITIES = {
    "CustomerId": "p.fogg138",
    "Email": "phileas@travelers.com",
    "Other": "balloondude83",
    "FacebookId": "phileas83",
    "GoogleAdvertisingIdentifier": "phileas83",
}


def contract_bytes(record: dict) -> bytes:
    return (json.dumps(record) + "\n").encode()


def test_it_reproduces_the_seed_member_added_and_member_removed_examples(make_connection, stream):
    audience = Audience.objects.create(id=123123, internal_name="low_engagement_q3", external_name="LowEngagement")
    connection = make_connection(audience=audience)
    removed_identities = {key: value for key, value in SEED_IDENTITIES.items() if key != "GoogleAdvertisingIdentifier"}

    apply(audience, join("phileas", 1234565788, **SEED_IDENTITIES))
    apply(audience, leave("phileas", 1234565788, **removed_identities))
    drain(connection)

    added = {
        "MembershipChangedTimestamp": "1234565788",
        "AudienceId": 123123,
        "AudienceName": "LowEngagement",
        "IsMember": True,
        "UserIdentities": SEED_IDENTITIES,
    }
    removed = {**added, "IsMember": False, "UserIdentities": removed_identities}
    assert stream.raw() == contract_bytes(added) + contract_bytes(removed)
    records = stream.records()
    assert [list(record) for record in records] == [
        ["MembershipChangedTimestamp", "AudienceId", "AudienceName", "IsMember", "UserIdentities"]
    ] * 2
    assert list(records[0]["UserIdentities"]) == list(SEED_IDENTITIES)
    assert isinstance(records[0]["MembershipChangedTimestamp"], str)
    assert isinstance(records[0]["AudienceId"], int) and isinstance(records[0]["IsMember"], bool)


def test_it_uses_the_server_clock_when_no_timestamp_is_given(connection, audience, stream):
    import time

    before = int(time.time())
    apply(audience, join("u1", CustomerId="c1"))
    drain(connection)
    (record,) = stream.records()
    assert before <= int(record["MembershipChangedTimestamp"]) <= int(time.time())


def test_it_falls_back_to_the_internal_name_and_follows_renames(make_connection, stream, db):
    from audiences.services import audience_create

    audience = audience_create(internal_name="internal_only", external_name="   ")
    connection = make_connection(audience=audience)
    apply(audience, join("u1", 100, CustomerId="c1"))
    drain(connection)
    audience_update(audience=audience, external_name="Shown Outside")
    apply(audience, leave("u1", 101))
    drain(connection)
    audience_update(audience=audience, external_name="")
    apply(audience, join("u1", 102))
    drain(connection)

    records = stream.records()
    assert [record["AudienceName"] for record in records] == ["internal_only", "Shown Outside", "internal_only"]
    assert {record["AudienceId"] for record in records} == {audience.pk}


def test_it_can_send_bare_objects_without_a_newline(make_connection, audience, stream):
    connection = make_connection(append_newline=False)
    apply(audience, join("u1", 100, CustomerId="c1"), join("u2", 100, CustomerId="c2"))
    drain(connection)
    assert b"\n" not in stream.raw()
    assert stream.raw().startswith(b'{"MembershipChangedTimestamp": "100"')
    assert [record["UserIdentities"] for record in stream.records()] == [{"CustomerId": "c1"}, {"CustomerId": "c2"}]


def test_it_forwards_only_identities_the_connection_allows(make_connection, audience, stream):
    connection = make_connection(
        forward_email_addresses=False,
        forward_customer_ids=False,
        forward_idfas=False,
        forward_google_advertising_ids=False,
        identities_to_exclude=["FacebookId", "Other3"],
    )
    apply(
        audience,
        join(
            "u1",
            100,
            Email="a@example.com",
            CustomerId="c1",
            AppleAdvertisingIdentifier="idfa",
            GoogleAdvertisingIdentifier="gaid",
            FacebookId="fb",
            Other3="o3",
            AndroidId="android",
            YahooId="yahoo",
        ),
    )
    drain(connection)
    (record,) = stream.records()
    assert record["UserIdentities"] == {"AndroidId": "android", "YahooId": "yahoo"}


def test_it_keeps_every_forwarded_identity_by_default(connection, audience, stream):
    identities = {"Email": "a@example.com", "CustomerId": "c1", "AppleAdvertisingIdentifier": "idfa", "Other10": "x"}
    apply(audience, join("u1", 100, **identities))
    drain(connection)
    assert stream.records()[0]["UserIdentities"] == identities


def test_it_sends_anonymous_users_with_empty_identities(make_connection, audience, stream):
    connection = make_connection(identities_to_exclude=["Email"])
    apply(audience, join("nobody", 100), join("only-email", 100, Email="e@example.com"))
    drain(connection)
    assert [record["UserIdentities"] for record in stream.records()] == [{}, {}]
    assert all(record["IsMember"] is True for record in stream.records())


def test_it_skips_and_counts_anonymous_users_when_told_to(make_connection, audience, stream):
    connection = make_connection(send_anonymous_users=False, forward_email_addresses=False)
    apply(
        audience,
        join("nobody", 100),
        join("only-email", 100, Email="e@example.com"),
        join("known", 100, CustomerId="c1", Email="k@example.com"),
    )
    drain(connection)
    assert [record["UserIdentities"] for record in stream.records()] == [{"CustomerId": "c1"}]
    connection.refresh_from_db()
    assert connection.anonymous_skipped_count == 2
    assert Delivery.objects.filter(connection=connection, status=Delivery.Status.SKIPPED).count() == 2
    assert not Delivery.objects.filter(connection=connection, status=Delivery.Status.PENDING).exists()


@pytest.mark.parametrize("send_remove", [True, False])
def test_an_identity_change_by_put_follows_send_remove_on_identity_change(
    connection, configuration, audience, stream, send_remove
):
    configuration_update(configuration=configuration, send_remove_on_identity_change=send_remove)
    apply(audience, join("u1", 100, CustomerId="c1", Email="old@example.com"))
    user_identities_update(user_id="u1", identities={"CustomerId": "c1", "Email": "new@example.com"}, outbox=OUTBOX)
    drain(connection)

    sent = [(record["IsMember"], record["UserIdentities"]) for record in stream.records()]
    old, new = {"CustomerId": "c1", "Email": "old@example.com"}, {"CustomerId": "c1", "Email": "new@example.com"}
    expected = [(True, old), (False, old), (True, new)] if send_remove else [(True, old), (True, new)]
    assert sent == expected


@pytest.mark.parametrize("send_remove", [True, False])
def test_an_identity_change_by_an_add_follows_send_remove_on_identity_change(
    connection, configuration, audience, stream, send_remove
):
    configuration_update(configuration=configuration, send_remove_on_identity_change=send_remove)
    result_first = apply(audience, join("u1", 100, CustomerId="c1"))
    result_second = apply(audience, join("u1", 101, CustomerId="c2"))
    drain(connection)

    sent = [(record["IsMember"], record["UserIdentities"]) for record in stream.records()]
    expected = [(True, {"CustomerId": "c1"})]
    expected += [(False, {"CustomerId": "c1"})] if send_remove else []
    expected += [(True, {"CustomerId": "c2"})]
    assert sent == expected
    assert (result_first.accepted, result_second.accepted) == (1, 1)


def test_an_identity_change_reaches_every_audience_of_the_user(make_connection, stream, db):
    from audiences.services import audience_create

    first, second = audience_create(internal_name="first"), audience_create(internal_name="second")
    connections = [make_connection(audience=first), make_connection(audience=second)]
    apply(first, join("u1", 100, CustomerId="c1"))
    apply(second, join("u1", 100))
    apply(first, join("u1", 101, CustomerId="c2"))
    for connection in connections:
        drain(connection)
    by_audience = {}
    for record in stream.records():
        by_audience.setdefault(record["AudienceName"], []).append((record["IsMember"], record["UserIdentities"]))
    expected = [(True, {"CustomerId": "c1"}), (False, {"CustomerId": "c1"}), (True, {"CustomerId": "c2"})]
    assert by_audience == {"first": expected, "second": expected}


def test_an_identity_change_invisible_to_a_connection_sends_nothing_there(make_connection, audience, stream):
    connection = make_connection(forward_email_addresses=False)
    apply(audience, join("u1", 100, CustomerId="c1", Email="old@example.com"))
    user_identities_update(user_id="u1", identities={"CustomerId": "c1", "Email": "new@example.com"}, outbox=OUTBOX)
    drain(connection)
    assert [record["UserIdentities"] for record in stream.records()] == [{"CustomerId": "c1"}]


def test_no_op_changes_send_nothing_and_are_counted_as_ignored(connection, audience, stream):
    first = apply(audience, join("u1", 100, CustomerId="c1"), leave("u2", 100))
    second = apply(audience, join("u1", 101, CustomerId="c1"), join("u1", 102))
    drain(connection)
    assert (first.accepted, first.ignored) == (1, 1)
    assert (second.accepted, second.ignored) == (0, 2)
    assert len(stream.records()) == 1


def test_stale_changes_are_ignored_and_counted(connection, audience, stream):
    apply(audience, join("u1", 200, CustomerId="c1"))
    result = apply(audience, leave("u1", 199), join("u2", 50), leave("u2", 49))
    drain(connection)
    audience.refresh_from_db()
    assert (result.accepted, result.ignored, result.stale) == (1, 2, 2)
    assert audience.stale_change_count == 2
    assert [(record["IsMember"], record["MembershipChangedTimestamp"]) for record in stream.records()] == [
        (True, "200"),
        (True, "50"),
    ]
    assert audience.member_count == 2


def test_a_change_with_the_same_timestamp_as_the_last_is_applied(connection, audience, stream):
    result = apply(audience, join("u1", 300), leave("u1", 300), join("u1", 300))
    drain(connection)
    assert result.accepted == 3
    assert [record["IsMember"] for record in stream.records()] == [True, False, True]


def test_each_users_records_arrive_in_the_order_of_their_changes(connection, audience, stream):
    users, rounds = 100, 21
    expected: dict[str, list[tuple[bool, str]]] = {}
    for round_number in range(rounds):
        changes = []
        for user in range(users):
            user_id = f"user-{user}"
            is_member = round_number % 2 == 0
            identities = {"CustomerId": f"{user_id}-v{round_number // 4}"}
            changes.append(
                join(user_id, 1000 + round_number, **identities) if is_member else leave(user_id, 1000 + round_number)
            )
            expected.setdefault(user_id, []).append((is_member, str(1000 + round_number)))
        apply(audience, *changes)
    assert sum(len(sequence) for sequence in expected.values()) >= 2000

    drain(connection)

    arrived: dict[str, list[tuple[bool, str]]] = {}
    identities_seen: dict[str, list[str]] = {}
    for call in stream.records_by_call():
        customers = [record["UserIdentities"].get("CustomerId", "") for record in call]
        assert len(call) <= 500
        for record in call:
            customer = record["UserIdentities"].get("CustomerId", "")
            user_id = customer.rsplit("-v", 1)[0]
            arrived.setdefault(user_id, []).append((record["IsMember"], record["MembershipChangedTimestamp"]))
            identities_seen.setdefault(user_id, []).append(customer)
        assert len(customers) == len(set(customers)), "a batch holds at most one record per user"
    # identity changes (every 4 rounds) add remove/add pairs; keep only the join/leave sequence for the comparison
    collapsed = {
        user: [item for index, item in enumerate(sequence) if index == 0 or item != sequence[index - 1]]
        for user, sequence in arrived.items()
    }
    assert collapsed == expected


def test_deleting_an_audience_sends_one_deletion_record_per_connection(make_connection, audience, stream):
    connections = [make_connection(), make_connection()]
    apply(audience, join("u1", 100, CustomerId="c1"))
    audience_delete(audience=audience, outbox=OUTBOX)
    for connection in connections:
        drain(connection)
    records = stream.records()
    deletions = [record for record in records if record.get("AudienceDeleted")]
    assert len(deletions) == 2
    for deletion in deletions:
        assert list(deletion) == ["AudienceId", "AudienceName", "AudienceDeleted", "DeletedTimestamp"]
        assert deletion["AudienceId"] == audience.pk and deletion["AudienceName"] == "LowEngagement"
        assert isinstance(deletion["DeletedTimestamp"], str) and deletion["DeletedTimestamp"].isdigit()
    # the deletion record comes after the backlog on each connection
    assert [record.get("AudienceDeleted", False) for record in records] == [False, False, True, True] or [
        record.get("AudienceDeleted", False) for record in records
    ] == [False, True, False, True]
    audience.refresh_from_db()
    assert audience.deleted_at is not None and Audience.objects.filter(pk=audience.pk).exists()
