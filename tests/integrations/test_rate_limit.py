"""The client-side rate limit: batches stay within a second's worth of the connection's limits, their sending is
paced by those limits, and the share in use halves when Firehose throttles, then climbs back (AIMD)."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from integrations.connections import connection_pause, connection_resume, connection_update
from integrations.delivery import connection_drain, connections_sweep
from integrations.delivery.ratelimit import SEND_RATE_DECREASE, SEND_RATE_FLOOR, SEND_RATE_INCREASE
from integrations.models import Connection, DeliveryAttempt, DrainLease
from integrations.regions import LARGE_REGION_QUOTA, OTHER_REGION_QUOTA

from ..factories import apply, join, members
from ..support.drains import drain
from ..support.emulator import ServiceUnavailable, customer_ids, firehose_behaviour, throttle_first


def test_the_limits_default_to_the_regions_quota(make_connection):
    east = make_connection()
    other = make_connection(stream_name="other", region="ap-southeast-2")
    assert (east.records_per_second_limit, east.bytes_per_second_limit) == (500_000, 5 * 1024 * 1024)
    assert east.quota == LARGE_REGION_QUOTA
    assert (other.records_per_second_limit, other.bytes_per_second_limit) == (100_000, 1024 * 1024)
    assert other.quota == OTHER_REGION_QUOTA
    limited = make_connection(stream_name="limited", max_records_per_second=300, max_bytes_per_second=65_536)
    assert (limited.records_per_second_limit, limited.bytes_per_second_limit) == (300, 65_536)


def test_batches_hold_at_most_a_second_of_the_record_limit(make_connection, audience, stream):
    connection = make_connection(max_records_per_second=120)
    drain(connection)
    members(audience, 300)
    drain(connection)
    assert [len(call) for call in stream.records_by_call()] == [120, 120, 60]


def test_sending_is_paced_by_the_record_limit(make_connection, audience, stream):
    connection = make_connection(max_records_per_second=1000)
    drain(connection)
    members(audience, 2500)
    started = time.monotonic()
    drain(connection)
    elapsed = time.monotonic() - started
    # 2,500 records at 1,000/s with one second of burst allowance: the last batch cannot start before 1 s.
    assert len(stream.records()) == 2500
    assert elapsed >= 0.95, elapsed


def test_sending_is_paced_by_the_byte_limit(make_connection, audience, stream):
    connection = make_connection(max_bytes_per_second=20_000)
    drain(connection)
    members(audience, 300)
    started = time.monotonic()
    drain(connection)
    elapsed = time.monotonic() - started
    attempts = list(
        DeliveryAttempt.objects.filter(connection=connection).order_by("id").values_list("bytes", "records")
    )
    assert sum(records for _, records in attempts) == 300
    assert all(size <= 20_000 for size, _ in attempts), "no batch above a second's worth of bytes"
    # The last batch may only start once the bytes before it fit in the limit, less one second of burst.
    before_last = sum(size for size, _ in attempts[:-1])
    assert before_last > 30_000 and elapsed >= (before_last / 20_000 - 1) * 0.95, (attempts, elapsed)


def test_throttling_halves_the_send_rate_and_accepted_batches_raise_it_again(
    make_connection, audience, stream, monkeypatch, settings
):
    from integrations.delivery import connection_drain

    settings.FIREHOSE_RETRY_LIMIT = 10
    connection = make_connection()
    drain(connection)
    members(audience, 10)
    calls: list[int] = []

    def retry_now(seconds_since_lowered: float) -> None:
        lowered = Connection.objects.get(pk=connection.pk).send_rate_lowered_at
        Connection.objects.filter(pk=connection.pk).update(
            next_attempt_at=None, send_rate_lowered_at=lowered - timedelta(seconds=seconds_since_lowered)
        )

    with firehose_behaviour(monkeypatch, batch=throttle_first(3, calls)):
        connection_drain(connection.pk, 0, time_budget=5)
        connection.refresh_from_db()
        assert connection.send_rate == pytest.approx(SEND_RATE_DECREASE)
        retry_now(0)  # throttled again at once: the same congestion, the rate is not halved twice
        connection_drain(connection.pk, 0, time_budget=5)
        connection.refresh_from_db()
        assert connection.send_rate == pytest.approx(SEND_RATE_DECREASE)
        retry_now(2)  # throttled again later: halved again
        connection_drain(connection.pk, 0, time_budget=5)
        connection.refresh_from_db()
        assert connection.send_rate == pytest.approx(SEND_RATE_DECREASE**2)
        Connection.objects.filter(pk=connection.pk).update(next_attempt_at=None)
        drain(connection)
    connection.refresh_from_db()
    assert calls == [10, 10, 10, 10]
    assert len(stream.records()) == 10
    assert connection.send_rate == pytest.approx(SEND_RATE_DECREASE**2 + SEND_RATE_INCREASE)

    # Each batch accepted in full adds a step, up to the whole limit.
    members(audience, 10, prefix="more")
    Connection.objects.filter(pk=connection.pk).update(send_rate=0.99)
    drain(connection)
    connection.refresh_from_db()
    assert connection.send_rate == 1.0


def test_throttled_entries_of_a_partial_failure_lower_the_rate_too(make_connection, audience, stream, monkeypatch):
    connection = make_connection()
    drain(connection)
    members(audience, 4)
    calls: list[int] = []

    def throttle_one_entry(original, name, records):
        calls.append(len(records))
        if len(calls) > 1:
            return original(name, records)
        stored = original(name, records[1:])["RequestResponses"]
        return {
            "FailedPutCount": 1,
            "Encrypted": False,
            "RequestResponses": [
                {"ErrorCode": "ServiceUnavailableException", "ErrorMessage": "Slow down."},
                *stored,
            ],
        }

    with firehose_behaviour(monkeypatch, batch=throttle_one_entry):
        drain(connection)
    connection.refresh_from_db()
    assert calls == [4, 1]
    assert len(stream.records()) == 4
    assert connection.send_rate == pytest.approx(SEND_RATE_DECREASE + SEND_RATE_INCREASE)


def test_the_send_rate_never_falls_below_the_floor(make_connection, audience, stream, monkeypatch, settings):
    settings.FIREHOSE_RETRY_LIMIT = 50
    connection = make_connection()
    drain(connection)
    Connection.objects.filter(pk=connection.pk).update(send_rate=SEND_RATE_FLOOR * 1.5)
    members(audience, 1)

    def always_throttle(original, name, records):
        raise ServiceUnavailable()

    from integrations.delivery import connection_drain

    with firehose_behaviour(monkeypatch, batch=always_throttle):
        for _ in range(3):
            Connection.objects.filter(pk=connection.pk).update(next_attempt_at=None, send_rate_lowered_at=None)
            connection_drain(connection.pk, 0, time_budget=5)
    connection.refresh_from_db()
    assert connection.send_rate == pytest.approx(SEND_RATE_FLOOR)


def test_entries_failing_for_other_reasons_do_not_hold_the_rate_down(make_connection, audience, stream, monkeypatch):
    from ..support.emulator import fail_entries

    connection = make_connection()
    drain(connection)
    members(audience, 4)
    Connection.objects.filter(pk=connection.pk).update(send_rate=0.5)
    calls: list[list[bytes]] = []
    with firehose_behaviour(monkeypatch, batch=fail_entries([{1}], calls)):  # InternalFailure, not throttling
        drain(connection)
    connection.refresh_from_db()
    assert len(calls) == 2 and len(stream.records()) == 4
    assert connection.send_rate == pytest.approx(0.5 + 2 * SEND_RATE_INCREASE)


@pytest.mark.timeout(30)
def test_a_wait_for_the_rate_limit_never_outlasts_the_lease(make_connection, audience, stream, settings):
    settings.DRAIN_LEASE_SECONDS = 8
    connection = make_connection(max_records_per_second=1)
    drain(connection)
    # After heavy throttling the share in use is at its floor: one record takes 100 s of the limit.
    Connection.objects.filter(pk=connection.pk).update(send_rate=SEND_RATE_FLOOR)
    apply(audience, join("a", CustomerId="a"), join("b", CustomerId="b"))

    started = time.monotonic()
    report = connection_drain(connection.pk, 0, time_budget=60)
    assert time.monotonic() - started < settings.DRAIN_LEASE_SECONDS / 4
    assert report.delivered == 1 and customer_ids(stream.records()) == ["a"]
    lease = DrainLease.objects.get(connection=connection, shard=0)
    assert lease.token == "" and lease.not_before == report.parked_until
    assert timedelta(seconds=90) < report.parked_until - timezone.now() < timedelta(seconds=100)
    # Until then no drain takes the shard (none sends "b" twice), and the sweep leaves it alone.
    assert connection_drain(connection.pk, 0).leased is False
    assert connections_sweep() == []

    # New rate settings (or a Resume) start the slot again from now: "b" goes at once.
    connection_update(connection=connection, max_records_per_second=1000)
    assert connection_drain(connection.pk, 0).delivered == 1
    assert customer_ids(stream.records()) == ["a", "b"]


def test_a_parked_shard_is_taken_again_once_its_place_comes(make_connection, audience, stream, settings):
    settings.DRAIN_LEASE_SECONDS = 4  # a drain waits at most 1 s
    connection = make_connection(max_records_per_second=1)
    drain(connection)
    Connection.objects.filter(pk=connection.pk).update(send_rate=0.25)  # 4 s a record
    apply(audience, join("a", CustomerId="a"), join("b", CustomerId="b"))
    report = connection_drain(connection.pk, 0, time_budget=60)
    assert report.delivered == 1 and report.parked_until is not None
    assert connections_sweep() == []
    time.sleep(max(0.0, (report.parked_until - timezone.now()).total_seconds()) + 0.1)
    assert connections_sweep() == [(connection.pk, 0)]
    assert connection_drain(connection.pk, 0, time_budget=60).delivered == 1
    assert customer_ids(stream.records()) == ["a", "b"]


def test_resuming_starts_the_send_slot_again(make_connection, audience, stream):
    connection = make_connection(max_records_per_second=1)
    drain(connection)
    Connection.objects.filter(pk=connection.pk).update(send_rate=SEND_RATE_FLOOR)
    apply(audience, join("a", CustomerId="a"), join("b", CustomerId="b"))
    assert connection_drain(connection.pk, 0, time_budget=60).parked_until is not None
    connection_pause(connection=connection)
    connection_resume(connection=connection)
    connection.refresh_from_db()
    assert connection.send_slot_at is None
    assert DrainLease.objects.get(connection=connection, shard=0).not_before is None
