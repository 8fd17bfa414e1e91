"""Nothing lost under faults: 20,000 changes over 1,000 users and 3 connections per scenario, fed through the API of
a real deployment (gunicorn, Celery workers and beat, PostgreSQL, Redis, a Firehose emulator) while it is hurt.

After each scenario, on every connection: every accepted change arrived at least once (0 lost), and each user's
records, taken in arrival order with repeats collapsed, are exactly the sequence that was accepted.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from celery import Celery

from .cluster import Cluster
from .conftest import RESULTS

pytestmark = pytest.mark.faults

USERS = 1000
ROUNDS = 20
BATCH = 500
BASE_TIMESTAMP = 1_700_000_000


def user_id(number: int) -> str:
    return f"user-{number:04d}"


def expected_sequence() -> list[tuple[bool, str]]:
    return [(k % 2 == 0, str(BASE_TIMESTAMP + k)) for k in range(ROUNDS)]


@dataclass
class Run:
    name: str
    cluster: Cluster
    audience_id: int = 0
    connection_ids: list[int] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    confirmed_rounds: set[int] = field(default_factory=set)
    accepted_by_api: int = 0
    slowest_request: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def setup(self) -> Run:
        api = self.cluster.api
        status, audience = api("POST", "/audiences", {"internal_name": self.name, "external_name": self.name.title()})
        assert status == 201, audience
        status, configuration = api(
            "POST",
            "/configurations",
            {
                "name": self.name,
                "access_key_id": "AKIAFAULTSUITE000001",
                "secret_access_key": "fault-suite/secret",
                "endpoint_url": self.cluster.emulator.endpoint,
            },
        )
        assert status == 201, configuration
        self.audience_id = audience["id"]
        for number in range(3):
            stream = f"{self.name}-{number}"
            status, connection = api(
                "POST",
                "/connections",
                {"audience": self.audience_id, "configuration": configuration["id"], "stream_name": stream},
            )
            assert status == 201, connection
            self.streams.append(stream)
            self.connection_ids.append(connection["id"])
        return self

    # --- feeding ----------------------------------------------------------------------------------------------

    def feed(self, rounds: range, *, pause: float = 0.0) -> None:
        for k in rounds:
            changes = []
            for number in range(USERS):
                change = {"user_id": user_id(number), "is_member": k % 2 == 0, "timestamp": BASE_TIMESTAMP + k}
                if k % 2 == 0:
                    change["identities"] = {"CustomerId": user_id(number)}
                changes.append(change)
            self._post_until_accepted(k, {"changes": changes})
            time.sleep(pause)

    def _post_until_accepted(self, k: int, body: dict) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                status, answer = self.cluster.api("POST", f"/audiences/{self.audience_id}/changes", body, timeout=60)
            except OSError:
                status, answer = 0, None
            self.slowest_request = max(self.slowest_request, time.monotonic() - started)
            if status == 202:
                self.confirmed_rounds.add(k)
                self.accepted_by_api += answer["accepted"]
                return
            assert status == 0 or status >= 500, (status, answer)  # only outages are retried, never bad input
            time.sleep(0.5)
        raise AssertionError(f"round {k} was never accepted")

    def feed_in_background(self, rounds: range, *, pause: float = 0.0) -> threading.Thread:
        errors: list[BaseException] = []

        def target() -> None:
            try:
                self.feed(rounds, pause=pause)
            except BaseException as error:  # noqa: BLE001 - re-raised by join_feed
                errors.append(error)

        thread = threading.Thread(target=target, daemon=True)
        thread.errors = errors  # type: ignore[attr-defined]
        thread.start()
        return thread

    @staticmethod
    def join_feed(thread: threading.Thread) -> None:
        thread.join(timeout=600)
        assert not thread.is_alive(), "the feed did not finish"
        if thread.errors:  # type: ignore[attr-defined]
            raise thread.errors[0]  # type: ignore[attr-defined]

    # --- checking ---------------------------------------------------------------------------------------------

    def backlog(self) -> int:
        return sum(self.cluster.api("GET", f"/connections/{cid}")[1]["backlog"] for cid in self.connection_ids)

    def arrivals(self, stream: str) -> list[tuple[str, bool, str]]:
        arrived = []
        for data in self.cluster.emulator.records(stream):
            record = json.loads(data)
            arrived.append(
                (record["UserIdentities"]["CustomerId"], record["IsMember"], record["MembershipChangedTimestamp"])
            )
        return arrived

    def wait_until_delivered(self, timeout: float = 240) -> None:
        wanted = USERS * ROUNDS
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(len(set(self.arrivals(stream))) >= wanted for stream in self.streams):
                return
            time.sleep(2)
        counts = {stream: len(set(self.arrivals(stream))) for stream in self.streams}
        statuses = [self.cluster.api("GET", f"/connections/{cid}")[1] for cid in self.connection_ids]
        raise AssertionError(f"not everything arrived: {counts} of {wanted} each; connections: {statuses}")

    def check(self, *, max_duplicates: int) -> dict:
        assert self.confirmed_rounds == set(range(ROUNDS))
        expected = expected_sequence()
        lost = duplicates = arrived_total = 0
        order_ok = True
        for stream in self.streams:
            arrived = self.arrivals(stream)
            arrived_total += len(arrived)
            duplicates += len(arrived) - len(set(arrived))
            by_user: dict[str, list[tuple[bool, str]]] = {}
            for customer, is_member, timestamp in arrived:
                by_user.setdefault(customer, []).append((is_member, timestamp))
            for number in range(USERS):
                sequence = by_user.get(user_id(number), [])
                lost += sum((Counter(expected) - Counter(sequence)).values())
                collapsed = [item for i, item in enumerate(sequence) if i == 0 or item != sequence[i - 1]]
                if collapsed != expected:
                    order_ok = False
        expected_total = USERS * ROUNDS * len(self.streams)
        result = {
            "scenario": self.name,
            "accepted": len(self.confirmed_rounds) * USERS,
            "expected": expected_total,
            "arrived": arrived_total,
            "lost": lost,
            "duplicates": duplicates,
            "duplicate_percent": 100 * duplicates / expected_total,
            "order_ok": order_ok,
            "seconds": time.monotonic() - self.started,
            "slowest_request": self.slowest_request,
        }
        RESULTS.append(result)
        assert lost == 0, result
        assert order_ok, result
        assert duplicates <= max_duplicates, result
        return result


def tenth_of_a_percent() -> int:
    return USERS * ROUNDS * 3 // 1000


@pytest.fixture
def workers(cluster: Cluster):
    yield cluster
    cluster.stop_workers()


# --- scenarios ------------------------------------------------------------------------------------------------


def test_a_workers_killed_at_random_moments_lose_nothing(cluster: Cluster, workers):
    cluster.start_workers(3, concurrency=1)
    run = Run("killed-workers", cluster).setup()
    feed = run.feed_in_background(range(ROUNDS), pause=1.0)
    rng = random.Random(1)
    kills = 0
    deadline = time.monotonic() + 180
    while kills < 10 and time.monotonic() < deadline and (feed.is_alive() or run.backlog() > 0):
        if run.backlog() == 0:
            time.sleep(0.05)
            continue  # only kill during delivery
        cluster.kill_random_worker(rng)
        kills += 1
        time.sleep(rng.uniform(0.3, 1.2))
    run.join_feed(feed)
    run.wait_until_delivered()
    run.check(max_duplicates=kills * BATCH)
    assert kills == 10, f"only {kills} kills landed during delivery"


def test_b_redis_stopped_for_30_seconds_loses_nothing(cluster: Cluster, workers):
    cluster.start_workers(2, concurrency=2)
    run = Run("redis-outage", cluster).setup()
    feed = run.feed_in_background(range(ROUNDS), pause=1.5)
    time.sleep(4)
    cluster.redis.stop()
    outage_started = time.monotonic()
    rounds_before = len(run.confirmed_rounds)
    time.sleep(30)
    rounds_during = len(run.confirmed_rounds) - rounds_before
    cluster.redis.start()
    outage = time.monotonic() - outage_started
    run.join_feed(feed)
    run.wait_until_delivered()
    result = run.check(max_duplicates=tenth_of_a_percent())
    assert outage >= 30
    assert rounds_during >= 5, "the API kept accepting changes while Redis was down"
    assert result["slowest_request"] < 30


def test_c_postgresql_restarted_mid_run_loses_nothing(cluster: Cluster, workers):
    cluster.start_workers(2, concurrency=2)
    run = Run("postgres-restart", cluster).setup()
    feed = run.feed_in_background(range(ROUNDS), pause=0.5)
    time.sleep(6)
    cluster.postgres.restart()
    run.join_feed(feed)
    run.wait_until_delivered()
    run.check(max_duplicates=tenth_of_a_percent())


def test_d_throttling_and_failed_entries_all_along_lose_nothing(cluster: Cluster, workers):
    cluster.start_workers(2, concurrency=2)
    cluster.emulator.behave(throttle=0.3, fail_entries=0.1)
    try:
        run = Run("throttled", cluster).setup()
        run.feed(range(ROUNDS))
        run.wait_until_delivered()
    finally:
        cluster.emulator.behave()
    faults = cluster.emulator.stats()["faults"]
    assert faults.get("throttle", 0) > 0 and faults.get("failed_entries", 0) > 0
    run.check(max_duplicates=tenth_of_a_percent())


def test_e_an_endpoint_gone_past_the_retry_budget_faults_and_resume_delivers_the_backlog(cluster: Cluster, workers):
    cluster.start_workers(2, concurrency=2)
    run = Run("endpoint-gone", cluster).setup()
    run.feed(range(4))
    cluster.emulator.behave(refuse=True)
    try:
        run.feed(range(4, ROUNDS))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            statuses = [cluster.api("GET", f"/connections/{cid}")[1]["status"] for cid in run.connection_ids]
            if statuses == ["faulted"] * 3:
                break
            time.sleep(1)
        assert statuses == ["faulted"] * 3
        time.sleep(3)  # nothing raises a second alert while faulted
        for connection_id in run.connection_ids:
            status, alerts = cluster.api("GET", f"/alerts?connection={connection_id}&open=true")
            assert [(alert["type"], alert["count"]) for alert in alerts] == [("Retry Limit Exceeded", 1)], alerts
            backlog = cluster.api("GET", f"/connections/{connection_id}")[1]["backlog"]
            assert backlog > 0
    finally:
        cluster.emulator.behave()
    for connection_id in run.connection_ids:
        status, connection = cluster.api("POST", f"/connections/{connection_id}/resume")
        assert status == 200 and connection["status"] == "active"
    run.wait_until_delivered()
    run.check(max_duplicates=tenth_of_a_percent())


def test_f_two_workers_draining_the_same_connection_keep_order(cluster: Cluster, workers):
    cluster.start_workers(2, concurrency=2)
    run = Run("racing-workers", cluster).setup()
    kicker = Celery(broker=cluster.redis.url)
    stop = threading.Event()

    def kick_all_the_time() -> None:
        while not stop.is_set():
            for connection_id in run.connection_ids:
                kicker.send_task("integrations.tasks.drain_connection", args=[connection_id])
            time.sleep(0.05)

    thread = threading.Thread(target=kick_all_the_time, daemon=True)
    thread.start()
    try:
        run.feed(range(ROUNDS))
        run.wait_until_delivered()
    finally:
        stop.set()
        thread.join()
    run.check(max_duplicates=tenth_of_a_percent())


def test_g_server_errors_and_requests_hanging_past_the_client_timeout_lose_nothing(cluster: Cluster, workers):
    cluster.start_workers(2, concurrency=2)
    cluster.emulator.behave(error_500=0.05, hang=0.03, hang_seconds=5)  # the client gives up after 3 s
    try:
        run = Run("errors-and-hangs", cluster).setup()
        run.feed(range(ROUNDS))
        run.wait_until_delivered()
    finally:
        cluster.emulator.behave()
    faults = cluster.emulator.stats()["faults"]
    assert faults.get("error_500", 0) > 0 and faults.get("hang", 0) > 0
    run.check(max_duplicates=tenth_of_a_percent())
