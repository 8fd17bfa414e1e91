"""The delivery engine against the emulated Firehose: batching, partial failure, fallback, backoff, lifecycle."""

import itertools
import json

import boto3
import pytest
from django.test import override_settings
from moto.core import set_initial_no_auth_action_count

from audiences.models import Membership
from audiences.services import user_identities_update
from integrations.configurations import configuration_create
from integrations.connections import (
    connection_create,
    connection_pause,
    connection_resume,
    connection_resync,
    connection_test,
)
from integrations.delivery.settle import backoff_seconds
from integrations.models import Connection, Delivery, DeliveryAttempt, SystemAlert
from integrations.outbox import OUTBOX
from integrations.transport.firehose import LIMITS

from ..factories import apply, join, leave, members
from ..support.drains import drain
from ..support.emulator import customer_ids, fail_entries, firehose_behaviour, throttle_first


def test_501_records_make_two_calls(connection, audience, stream):
    members(audience, 501)
    drain(connection)
    assert [len(call) for call in stream.records_by_call()] == [500, 1]
    assert customer_ids(stream.records()) == [f"user-{n}" for n in range(501)]
    assert DeliveryAttempt.objects.filter(connection=connection, operation="PutRecordBatch").count() == 2


def test_batches_stay_within_4_mib(connection, audience, stream):
    big = {key: key[0] * 1024 for key in ("AndroidId", "AppleVendorIdentifier", "Email", "FacebookId", "GoogleId")}
    big.update({f"Other{n}": str(n) * 1024 for n in range(2, 11)})
    members(audience, 400, **big)
    drain(connection)

    objects = stream.objects()
    sizes = [len(data) for data in objects]
    record_size = len(objects[0].split(b"\n")[0]) + 1
    per_call = LIMITS.batch_bytes // record_size
    assert per_call < 500, "the records are large enough for the byte limit to bind before the count limit"
    assert all(size <= LIMITS.batch_bytes for size in sizes)
    assert sizes[0] + record_size > LIMITS.batch_bytes, "each call is filled up to the 4 MiB boundary"
    assert [len(call) for call in stream.records_by_call()] == [per_call] * (400 // per_call) + [400 % per_call]
    assert len(stream.records()) == 400


def test_a_partial_failure_resends_only_the_failed_entries(connection, audience, stream, monkeypatch):
    members(audience, 10)
    calls: list[list[bytes]] = []
    with firehose_behaviour(monkeypatch, batch=fail_entries([{2, 5, 7}], calls)):
        drain(connection)

    assert len(calls) == 2
    assert calls[1] == [calls[0][2], calls[0][5], calls[0][7]]
    assert sorted(customer_ids(stream.records())) == sorted(f"user-{n}" for n in range(10))
    attempts = list(DeliveryAttempt.objects.filter(connection=connection).order_by("id"))
    assert [(a.outcome, a.records, a.failed_records, a.error_code) for a in attempts] == [
        ("partial", 10, 3, "InternalFailure"),
        ("delivered", 3, 0, ""),
    ]
    connection.refresh_from_db()
    assert connection.status == "active" and connection.delivered_count == 10
    alert = SystemAlert.objects.get(connection=connection)
    assert alert.type == SystemAlert.Type.INTERNAL_SERVER_ERROR and "InternalFailure" in alert.last_message


def test_throttling_is_retried_with_growing_delays_then_delivered(connection, audience, stream, monkeypatch):
    members(audience, 3)
    calls: list[int] = []
    with override_settings(FIREHOSE_RETRY_LIMIT=5, FIREHOSE_BACKOFF_BASE_SECONDS=0.05, FIREHOSE_BACKOFF_CAP_SECONDS=5):
        with firehose_behaviour(monkeypatch, batch=throttle_first(3, calls)):
            drain(connection)

    assert len(calls) == 4
    attempts = list(DeliveryAttempt.objects.filter(connection=connection).order_by("id"))
    assert [attempt.outcome for attempt in attempts] == ["retryable"] * 3 + ["delivered"]
    assert all(attempt.error_code == "ServiceUnavailableException" for attempt in attempts[:3])
    gaps = [(later.started_at - earlier.started_at).total_seconds() for earlier, later in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.025 and gaps[1] >= 0.05 and gaps[2] >= 0.1
    assert gaps[0] < gaps[2]
    assert customer_ids(stream.records()) == ["user-0", "user-1", "user-2"]
    connection.refresh_from_db()
    assert connection.consecutive_failures == 0 and connection.status == "active"
    assert SystemAlert.objects.get(connection=connection, type=SystemAlert.Type.INTERNAL_SERVER_ERROR).count == 3


def test_backoff_doubles_up_to_the_cap():
    with override_settings(FIREHOSE_BACKOFF_BASE_SECONDS=1.0, FIREHOSE_BACKOFF_CAP_SECONDS=10.0):
        for failures, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (9, 10)]:
            delays = [backoff_seconds(failures) for _ in range(50)]
            assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
            assert len(set(delays)) > 1, "jittered"


def test_retry_limit_exceeded_faults_the_connection_and_keeps_the_backlog(connection, audience, stream, monkeypatch):
    members(audience, 3)
    calls: list[int] = []
    with override_settings(FIREHOSE_RETRY_LIMIT=2, FIREHOSE_BACKOFF_BASE_SECONDS=0.02):
        with firehose_behaviour(monkeypatch, batch=throttle_first(100, calls)):
            drain(connection)

    assert len(calls) == 3, "the first try and two retries"
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED
    assert Delivery.objects.filter(connection=connection, status=Delivery.Status.PENDING).count() == 3
    alert = SystemAlert.objects.get(connection=connection, type=SystemAlert.Type.RETRY_LIMIT_EXCEEDED)
    assert alert.is_open and alert.count == 1 and "Resume" in alert.last_message
    assert stream.records() == []

    # Resume: the backlog goes out, in order.
    apply(audience, leave("user-1"))
    connection_resume(connection=connection)
    drain(connection)
    assert [(r["IsMember"], r["UserIdentities"]["CustomerId"]) for r in stream.records()] == [
        (True, "user-0"),
        (True, "user-1"),
        (True, "user-2"),
        (False, "user-1"),
    ]
    connection.refresh_from_db()
    assert connection.status == "active" and connection.consecutive_failures == 0


def test_a_paused_connection_accumulates_and_resume_sends_the_backlog_in_order(connection, audience, stream):
    connection_pause(connection=connection)
    apply(audience, join("u1", 100, CustomerId="c1"), join("u2", 100, CustomerId="c2"))
    apply(audience, leave("u1", 101), join("u1", 102))
    drain(connection)
    assert stream.records() == []
    assert Delivery.objects.filter(connection=connection, status=Delivery.Status.PENDING).count() == 4

    connection_resume(connection=connection)
    drain(connection)
    assert [
        (r["IsMember"], r["UserIdentities"]["CustomerId"], r["MembershipChangedTimestamp"]) for r in stream.records()
    ] == [
        (True, "c1", "100"),
        (True, "c2", "100"),
        (False, "c1", "101"),
        (True, "c1", "102"),
    ]


def test_a_new_connection_starts_with_an_initial_sync_of_current_members(audience, configuration, stream):
    members(audience, 3)
    apply(audience, leave("user-1"))
    connection = connection_create(audience=audience, configuration=configuration, stream_name=stream.name)
    drain(connection)
    assert [(r["IsMember"], r["UserIdentities"]["CustomerId"]) for r in stream.records()] == [
        (True, "user-0"),
        (True, "user-2"),
    ]
    connection.refresh_from_db()
    assert connection.resync_cursor is None and connection.resync_queued == 2


def test_a_paused_new_connection_waits_and_then_syncs(audience, configuration, stream):
    members(audience, 2)
    connection = connection_create(
        audience=audience, configuration=configuration, stream_name=stream.name, status="paused"
    )
    drain(connection)
    assert stream.records() == []
    connection_resync(connection=connection)
    connection_resume(connection=connection)
    drain(connection)
    assert customer_ids(stream.records()) == ["user-0", "user-1"]


def test_resync_sends_every_current_member_with_current_identities_after_the_backlog(connection, audience, stream):
    members(audience, 3)
    drain(connection)
    user_identities_update(
        user_id="user-0", identities={"CustomerId": "user-0", "Email": "new@example.com"}, outbox=OUTBOX
    )
    apply(audience, leave("user-2"))
    connection_pause(connection=connection)
    connection_resync(connection=connection)
    connection_resume(connection=connection)
    drain(connection)

    by_user: dict[str, list] = {}
    for record in stream.records()[3:]:
        by_user.setdefault(record["UserIdentities"]["CustomerId"], []).append(
            (record["IsMember"], record["UserIdentities"].get("Email"))
        )
    assert by_user == {
        "user-0": [(False, None), (True, "new@example.com"), (True, "new@example.com")],
        "user-1": [(True, None)],
        "user-2": [(False, None)],
    }
    connection.refresh_from_db()
    assert (connection.resync_total, connection.resync_queued, connection.resync_cursor) == (2, 2, None)


def test_a_missing_stream_faults_the_connection_with_stream_not_found(make_connection, audience, stream):
    connection = make_connection(stream_name="no-such-stream")
    apply(audience, join("u1", CustomerId="c1"))
    drain(connection)
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED
    assert SystemAlert.objects.get(connection=connection).type == SystemAlert.Type.STREAM_NOT_FOUND
    assert Delivery.objects.filter(connection=connection, status=Delivery.Status.PENDING).count() == 1


def _limited_credentials(actions: list[str]) -> tuple[str, str]:
    iam = boto3.client("iam", region_name="us-east-1")
    iam.create_user(UserName="forwarder")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": ["*"]}]}
    iam.put_user_policy(UserName="forwarder", PolicyName="firehose", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="forwarder")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@set_initial_no_auth_action_count(5)
def test_it_falls_back_to_put_record_when_put_record_batch_is_denied(aws, audience, db):
    from ..support.emulator import EmulatedStream

    stream = EmulatedStream().create()
    access_key_id, secret = _limited_credentials(["firehose:DescribeDeliveryStream", "firehose:PutRecord"])
    configuration = configuration_create(name="Seed policy", access_key_id=access_key_id, secret_access_key=secret)
    connection = connection_create(audience=audience, configuration=configuration, stream_name=stream.name)
    members(audience, 3)
    drain(connection)

    assert customer_ids(stream.records()) == ["user-0", "user-1", "user-2"]
    assert [len(call) for call in stream.records_by_call()] == [1, 1, 1]
    connection.refresh_from_db()
    assert connection.status == "active" and connection.batch_permitted is False
    alert = SystemAlert.objects.get(connection=connection)
    assert alert.type == SystemAlert.Type.BATCH_NOT_PERMITTED and "firehose:PutRecordBatch" in alert.last_message
    assert secret not in alert.last_message
    operations = list(DeliveryAttempt.objects.filter(connection=connection).values_list("operation", "outcome"))
    assert operations == [("PutRecordBatch", "permanent")] + [("PutRecord", "delivered")] * 3


@set_initial_no_auth_action_count(5)
def test_credentials_without_put_permission_fault_with_access_denied(aws, audience, db):
    from ..support.emulator import EmulatedStream

    stream = EmulatedStream().create()
    access_key_id, secret = _limited_credentials(["firehose:DescribeDeliveryStream"])
    configuration = configuration_create(name="Describe only", access_key_id=access_key_id, secret_access_key=secret)
    connection = connection_create(audience=audience, configuration=configuration, stream_name=stream.name)
    members(audience, 2)
    drain(connection)

    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED
    assert list(SystemAlert.objects.filter(connection=connection).values_list("type", flat=True)) == [
        SystemAlert.Type.ACCESS_DENIED
    ]
    assert Delivery.objects.filter(connection=connection, status=Delivery.Status.PENDING).count() == 2
    assert stream.objects() == []


def test_test_connection_reports_status_and_arn(connection):
    result = connection_test(connection=connection)
    assert result.ok and result.stream_status == "ACTIVE"
    assert result.stream_arn.startswith("arn:aws:firehose:us-east-1:") and result.stream_arn.endswith(
        ":deliverystream/audience-stream"
    )
    connection.refresh_from_db()
    assert connection.stream_arn == result.stream_arn


def test_test_connection_explains_a_missing_stream_in_plain_words(make_connection):
    result = connection_test(connection=make_connection(stream_name="missing"))
    assert not result.ok and "does not exist" in result.error


@pytest.mark.parametrize("statuses", [("active",)])
def test_the_iam_policy_is_filled_in_once_tested(connection, statuses):
    from integrations.selectors import connection_iam_policy

    before = connection_iam_policy(connection)["Statement"][0]["Resource"][0]
    assert before == "arn:aws:firehose:us-east-1:{account-id}:deliverystream/audience-stream"
    connection_test(connection=connection)
    connection.refresh_from_db()
    policy = connection_iam_policy(connection)
    assert policy["Statement"][0]["Resource"][0] == connection.stream_arn
    assert policy["Statement"][0]["Action"] == [
        "firehose:DescribeDeliveryStream",
        "firehose:PutRecord",
        "firehose:PutRecordBatch",
    ]


@pytest.mark.parametrize(
    "region, arn",
    [
        ("cn-north-1", "arn:aws-cn:firehose:cn-north-1:{account-id}:deliverystream/s"),
        ("cn-northwest-1", "arn:aws-cn:firehose:cn-northwest-1:{account-id}:deliverystream/s"),
        ("us-gov-west-1", "arn:aws-us-gov:firehose:us-gov-west-1:{account-id}:deliverystream/s"),
        ("eu-west-1", "arn:aws:firehose:eu-west-1:{account-id}:deliverystream/s"),
    ],
)
def test_the_iam_policy_uses_the_partition_of_the_region(audience, configuration, region, arn):
    from integrations.selectors import connection_iam_policy

    connection = connection_create(audience=audience, configuration=configuration, stream_name="s", region=region)
    assert connection_iam_policy(connection)["Statement"][0]["Resource"] == [arn]


def test_a_record_over_1000_kib_is_failed_with_an_alert_and_the_rest_goes_on(connection, audience, stream):
    from audiences.models import User

    members(audience, 2)
    User.objects.filter(external_id="user-0").update(identities={"CustomerId": "x" * (1000 * 1024)})
    connection_resync(connection=connection)
    Delivery.objects.filter(kind=Delivery.Kind.CHANGE).update(status=Delivery.Status.DELIVERED)
    drain(connection)

    assert customer_ids(stream.records()) == ["user-1"]
    failed = Delivery.objects.get(connection=connection, status=Delivery.Status.FAILED)
    assert failed.user.external_id == "user-0"
    alert = SystemAlert.objects.get(connection=connection)
    assert alert.type == SystemAlert.Type.RECORD_TOO_LARGE and connection.status == "active"
    connection.refresh_from_db()
    assert connection.failed_count == 1


def test_the_sweep_kicks_only_connections_with_due_work(connection, make_connection, audience, db):
    from integrations.delivery import connections_sweep

    idle = make_connection(stream_name="idle-stream")
    Connection.objects.filter(pk=idle.pk).update(resync_cursor=None)
    apply(audience, join("u1"))
    Delivery.objects.filter(connection=idle).update(status=Delivery.Status.DELIVERED)
    assert connections_sweep() == [(connection.pk, 0)]
    connection_pause(connection=connection)
    assert connections_sweep() == []


def test_a_batch_whose_entries_all_fail_backs_off_before_the_retry(connection, audience, stream, monkeypatch):
    members(audience, 2)
    calls: list[list[bytes]] = []
    with override_settings(FIREHOSE_RETRY_LIMIT=5, FIREHOSE_BACKOFF_BASE_SECONDS=0.2):
        with firehose_behaviour(monkeypatch, batch=fail_entries([{0, 1}, {0, 1}], calls)):
            drain(connection)
    attempts = list(DeliveryAttempt.objects.filter(connection=connection).order_by("id"))
    assert [attempt.outcome for attempt in attempts] == ["partial", "partial", "delivered"]
    gaps = [(later.started_at - earlier.started_at).total_seconds() for earlier, later in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2
    assert customer_ids(stream.records()) == ["user-0", "user-1"]


def test_a_request_failing_after_the_connection_faulted_keeps_the_reason_it_faulted(connection):
    """Another shard's request in flight when the connection faulted fails too: its error must not hide the fault's."""
    from integrations.delivery.settle import unless_faulted

    Connection.objects.filter(pk=connection.pk).update(status=Connection.Status.FAULTED, last_error="Gave up.")
    Connection.objects.filter(pk=connection.pk).update(last_error=unless_faulted("EndpointConnectionError"))
    connection.refresh_from_db()
    assert connection.last_error == "Gave up."
    Connection.objects.filter(pk=connection.pk).update(status=Connection.Status.ACTIVE)
    Connection.objects.filter(pk=connection.pk).update(last_error=unless_faulted("EndpointConnectionError"))
    connection.refresh_from_db()
    assert connection.last_error == "EndpointConnectionError"


# --- stale changes across audiences (contract section 14) -------------------------------------------------------


def test_an_identity_change_in_one_audience_never_makes_a_change_in_another_stale(make_connection, audience, stream):
    from audiences.services import audience_create

    from ..support.emulator import EmulatedStream

    other = audience_create(internal_name="Other")
    other_stream = EmulatedStream(name="other-stream", bucket="other-records").create()
    other_connection = make_connection(audience=other, stream_name=other_stream.name)
    apply(audience, join("u", 100, CustomerId="old"))
    apply(other, join("u", 100, CustomerId="old"))
    apply(audience, join("u", 200, CustomerId="new"))  # an identity change stamped 200, sent to "other" too
    result = apply(other, leave("u", 150))  # newer than other's own last change (100): applied
    assert (result.accepted, result.stale) == (1, 0)
    other.refresh_from_db()
    assert other.member_count == 0 and other.stale_change_count == 0
    drain(other_connection)
    sent = [(record["IsMember"], record["UserIdentities"]["CustomerId"]) for record in other_stream.records()]
    assert sent == [(True, "old"), (False, "old"), (True, "new"), (False, "new")]


def test_an_identity_update_by_the_users_api_never_makes_a_later_change_stale(connection, audience):
    apply(audience, join("u", 100, CustomerId="old"))
    user_identities_update(
        user_id="u", identities={"CustomerId": "new"}, outbox=OUTBOX
    )  # stamped with the server's clock
    result = apply(audience, leave("u", 150))
    assert (result.accepted, result.stale) == (1, 0)
    assert not Membership.objects.get(user__external_id="u").is_member


def test_each_record_is_claimed_with_its_users_id_as_partition_key_and_a_deletion_with_the_audiences(
    connection, audience
):
    from audiences.services import audience_delete
    from integrations.delivery.batch import DrainReport
    from integrations.delivery.claim import claim_batch

    apply(audience, join("tenant/42", CustomerId="a"), join("b", CustomerId="b"))
    members_batch = claim_batch(connection, 0, 0, DrainReport())
    assert members_batch.keys == ["tenant/42", "b"]

    Delivery.objects.filter(connection=connection).update(status=Delivery.Status.DELIVERED)
    audience_delete(audience=audience, outbox=OUTBOX)
    deletion_batch = claim_batch(connection, 0, members_batch.claimed_through, DrainReport())
    assert [json.loads(record)["AudienceDeleted"] for record in deletion_batch.records] == [True]
    assert deletion_batch.keys == [str(audience.pk)]
