"""The proof of "nothing lost under concurrency": a seeded random scheduler runs API clients, operators and drains
in threads at once on PostgreSQL, against the Firehose emulator, then compares what every stream received with the
database and the database with a pure-Python model (tests/support/concurrency_model.py).

Clients send batches of changes with overlapping new and existing users (the same new users in different orders),
identity updates, and now and then a change stamped far in the future; operators create and delete connections and
audiences, pause, resume and resync; drains deliver every shard. Afterwards, with everything drained:

- no request got a 5xx and no drain raised;
- every (audience, user) ended in a state that some real-time order of its accepted batches explains (the model);
- replaying a connection's records gives exactly its audience's members, each with its current identities, and an
  audience's deletion record comes last (nothing lost, nothing after);
- each user's records on each connection arrived in the order of that user's deliveries;
- no pending row and no running resync is left, and each audience's member count equals its memberships.
"""

from __future__ import annotations

import json
import random
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
from django.db import connection as db_connection
from rest_framework.test import APIClient

from api.services import api_key_create
from audiences.models import Audience, Membership, User
from integrations import retention
from integrations.configurations import configuration_create
from integrations.connections import connection_delete, connection_resume
from integrations.delivery import connection_drain
from integrations.delivery import resync as resync_stage
from integrations.models import Connection, Delivery

from ..factories import ACCESS_KEY_ID, SECRET_ACCESS_KEY
from ..support import firehose_emulator
from ..support.concurrency_model import Change, History
from ..support.localhost import free_port

pytestmark = pytest.mark.django_db(transaction=True)

SHARDS = 2
CLIENTS = 6
DRAINS = 2
OPS_PER_CLIENT = 45
SEEDS = (1, 2, 3)


@pytest.fixture(autouse=True)
def postgresql_only():
    if db_connection.vendor != "postgresql":
        pytest.skip("concurrent writers: SQLite runs one writing transaction at a time")


@pytest.fixture
def emulator():
    port = free_port()
    server = firehose_emulator.DataServer("127.0.0.1", port)
    with firehose_emulator.STATE.lock:
        firehose_emulator.STATE.records.clear()
        firehose_emulator.STATE.behaviour = {}
    yield f"http://127.0.0.1:{port}"
    server.close()


@pytest.fixture
def shards(delivery_shards):
    delivery_shards(SHARDS)


@dataclass
class World:
    """What the scheduler knows: ids to pick from, fresh values, and the history of answers."""

    rng: random.Random
    configuration_id: int
    base_timestamp: int = field(default_factory=lambda: int(time.time()) - 1_000_000)
    lock: threading.Lock = field(default_factory=threading.Lock)
    audiences: list[int] = field(default_factory=list)
    deleted_audiences: set[int] = field(default_factory=set)
    connections: dict[int, int] = field(default_factory=dict)  # connection id -> audience id
    deleted_connections: set[int] = field(default_factory=set)
    users: list[str] = field(default_factory=list)
    shared_new_users: list[str] = field(default_factory=list)
    shared_uses: int = 0
    twin: tuple[list[str], threading.Barrier] | None = None
    counter: int = 0
    history: History = field(default_factory=History)
    errors: list[str] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def fresh(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter

    def timestamp(self) -> int:
        return self.base_timestamp + self.fresh()

    def new_users(self, rng: random.Random) -> list[str]:
        """Users no batch has seen yet; every group is handed to two batches, each in its own order."""
        with self.lock:
            if self.shared_uses == 0:
                self.shared_new_users = [f"n{self.counter}-{index}" for index in range(rng.randint(2, 6))]
                self.counter += 1
                self.shared_uses = 2
                self.users.extend(self.shared_new_users)
            self.shared_uses -= 1
            group = list(self.shared_new_users)
        rng.shuffle(group)
        return group

    def twin_users(self, rng: random.Random) -> list[str]:
        """The same many new users for two batches sent at the same moment, in opposite orders; alone after 2 s."""
        with self.lock:
            if self.twin is None:
                group = [f"t{self.counter}-{index}" for index in range(rng.randint(100, 300))]
                self.counter += 1
                self.users.extend(group)
                self.twin = (group, threading.Barrier(2, timeout=2))
                group, barrier = self.twin
            else:
                (group, barrier), self.twin = self.twin, None
                group = group[::-1]
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            with self.lock:
                if self.twin is not None and self.twin[1] is barrier:
                    self.twin = None
        return list(group)

    def pick(self, rng: random.Random, items) -> int | None:
        with self.lock:
            items = list(items)
        return rng.choice(items) if items else None

    def live_audiences(self) -> list[int]:
        with self.lock:
            return [pk for pk in self.audiences if pk not in self.deleted_audiences]

    def live_connections(self) -> list[int]:
        with self.lock:
            return [pk for pk in self.connections if pk not in self.deleted_connections]


def identities(user_id: str, world: World) -> dict[str, str]:
    return {"CustomerId": user_id, "Email": f"{user_id}.v{world.fresh()}@example.com"}


class Client:
    def __init__(self, world: World, key: str, seed: int) -> None:
        self.world = world
        self.rng = random.Random(seed)
        self.api = APIClient()
        self.api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")

    def call(self, method: str, path: str, body: dict | None = None, expected=(200,)) -> tuple[int, dict | None]:
        send = getattr(self.api, method)
        try:
            response = send(path, body, format="json") if body is not None else send(path)
        except Exception:  # noqa: BLE001 - what the server would have answered 500 for
            self.world.answers["500"] += 1
            self.world.errors.append(f"{method.upper()} {path}: 500 {traceback.format_exc(limit=-6)}")
            return 500, None
        self.world.answers[f"{response.status_code}"] += 1
        if response.status_code not in expected:
            self.world.errors.append(f"{method.upper()} {path}: {response.status_code} {response.content[:300]!r}")
        try:
            return response.status_code, response.json() if response.content else None
        except ValueError:
            return response.status_code, None

    def run(self, operations: int) -> None:
        choices = [
            (self.batch, 55),
            (self.identity_update, 8),
            (self.connection_create, 6),
            (self.connection_delete, 3),
            (self.pause_or_resume, 8),
            (self.resync, 6),
            (self.audience_create, 3),
            (self.audience_delete, 1),
        ]
        actions, weights = zip(*choices, strict=True)
        try:
            for _ in range(operations):
                self.rng.choices(actions, weights)[0]()
        except Exception:  # noqa: BLE001 - a client that stops is a finding too
            self.world.errors.append(f"client stopped: {traceback.format_exc(limit=-8)}")
        finally:
            db_connection.close()

    def batch(self) -> None:
        world = self.world
        # Now and then a batch for an audience deleted before: 404, nothing stored.
        audience_id = world.pick(self.rng, world.audiences if self.rng.random() < 0.05 else world.live_audiences())
        twin = self.rng.random() < 0.15
        if twin:
            users = world.twin_users(self.rng)
        else:
            users = world.new_users(self.rng) if self.rng.random() < 0.5 else []
        with world.lock:
            known = list(world.users)
        users += self.rng.sample(known, min(len(known), self.rng.randint(1, 30)))
        changes, sent = [], []
        for user_id in users:
            change = Change(is_member=self.rng.random() < 0.6, timestamp=world.timestamp())
            item = {"user_id": user_id, "is_member": change.is_member, "timestamp": change.timestamp}
            if change.is_member:
                item["identities"] = identities(user_id, world)
            changes.append((user_id, change))
            sent.append(item)
        future = not twin and self.rng.random() < 0.04
        if future:  # contract section 14: refused with its field path, and nothing of the batch is stored
            sent[-1]["timestamp"] = int(time.time()) + 3600
        started = time.monotonic()
        status, body = self.call(
            "post",
            f"/api/v1/audiences/{audience_id}/changes",
            {"changes": sent},
            expected=(400, 404) if future else (202, 404),
        )
        ended = time.monotonic()
        if future:
            if status == 400 and body and body["errors"][0]["field"] != f"changes[{len(sent) - 1}].timestamp":
                world.errors.append(f"far-future timestamp refused with the wrong field: {body}")
        elif status == 202:
            world.history.batch_accepted(audience_id, changes, started, ended)

    def identity_update(self) -> None:
        user_id = self.world.pick(self.rng, self.world.users)
        if user_id is not None:
            self.call("put", f"/api/v1/users/{user_id}", {"identities": identities(user_id, self.world)})

    def connection_create(self) -> None:
        audience_id = self.world.pick(self.rng, self.world.live_audiences())
        body = {
            "audience": audience_id,
            "configuration": self.world.configuration_id,
            "stream_name": f"stream-{self.world.fresh()}",
        }
        status, answer = self.call("post", "/api/v1/connections", body, expected=(201, 400))
        if status == 201:
            with self.world.lock:
                self.world.connections[answer["id"]] = audience_id
        elif status == 400 and "audience" not in json.dumps(answer):
            self.world.errors.append(f"connection refused for another reason than a deleted audience: {answer}")

    def connection_delete(self) -> None:
        connection_id = self.world.pick(self.rng, self.world.live_connections())
        if connection_id is None:
            return
        with self.world.lock:
            self.world.deleted_connections.add(connection_id)
        try:
            connection_delete(connection=Connection.objects.get(pk=connection_id))
        except Exception as error:  # noqa: BLE001 - every failure is a finding
            self.world.errors.append(f"connection_delete({connection_id}): {error!r}")

    def pause_or_resume(self) -> None:
        connection_id = self.world.pick(self.rng, self.world.live_connections())
        if connection_id is not None:
            action = self.rng.choice(["pause", "resume"])
            self.call("post", f"/api/v1/connections/{connection_id}/{action}", expected=(200, 404))

    def resync(self) -> None:
        connection_id = self.world.pick(self.rng, self.world.live_connections())
        if connection_id is not None:
            self.call("post", f"/api/v1/connections/{connection_id}/resync", expected=(202, 404))

    def audience_create(self) -> None:
        status, answer = self.call(
            "post", "/api/v1/audiences", {"internal_name": f"a{self.world.fresh()}"}, expected=(201,)
        )
        if status == 201:
            with self.world.lock:
                self.world.audiences.append(answer["id"])

    def audience_delete(self) -> None:
        live = self.world.live_audiences()
        if len(live) < 3:
            return
        audience_id = self.rng.choice(live)
        with self.world.lock:
            self.world.deleted_audiences.add(audience_id)
        self.call("delete", f"/api/v1/audiences/{audience_id}", expected=(204, 404))


def drains(world: World, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    try:
        while not stop.is_set():
            connection_id = world.pick(rng, world.live_connections())
            if connection_id is None:
                time.sleep(0.01)
                continue
            try:
                connection_drain(connection_id, rng.randrange(SHARDS), time_budget=0.3)
            except Connection.DoesNotExist:
                pass  # deleted meanwhile
            except Exception as error:  # noqa: BLE001 - every failure is a finding
                world.errors.append(f"drain of connection {connection_id}: {error!r}")
    finally:
        db_connection.close()


def drain_everything(world: World) -> None:
    for connection in Connection.objects.exclude(pk__in=world.deleted_connections):
        if connection.status != Connection.Status.ACTIVE:
            connection_resume(connection=connection)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        live = Connection.objects.exclude(pk__in=world.deleted_connections)
        busy = Delivery.objects.filter(connection__in=live, status=Delivery.Status.PENDING).exists()
        if not busy and not live.filter(resync_cursor__isnull=False).exists():
            return
        for connection_id in live.values_list("pk", flat=True):
            for shard in reversed(range(SHARDS)):  # shard 0 last: an audience's deletion record waits there
                connection_drain(connection_id, shard, time_budget=10)
    raise AssertionError("the backlogs did not drain within 2 minutes")


def purge_deleted_connections() -> None:
    if retention is not None:
        while not retention.connections_purge_deleted().finished:
            pass


def received(stream: str) -> list[dict]:
    with firehose_emulator.STATE.lock:
        return [json.loads(record) for record in firehose_emulator.STATE.records[stream]]


def check(world: World) -> list[str]:
    problems = list(world.errors)
    final = {
        (audience_id, external_id): (is_member, last)
        for audience_id, external_id, is_member, last in Membership.objects.values_list(
            "audience_id", "user__external_id", "is_member", "last_changed_timestamp"
        )
    }
    problems += world.history.mismatches(final)
    identities_now = dict(User.objects.values_list("external_id", "identities"))
    for audience in Audience.objects.all():
        members = set(Membership.objects.filter(audience=audience, is_member=True).values_list("user__external_id"))
        if audience.member_count != len(members):
            problems.append(f"audience {audience.pk}: member_count {audience.member_count}, members {len(members)}")
    for connection in Connection.objects.exclude(pk__in=world.deleted_connections).select_related("audience"):
        problems += connection_problems(connection, identities_now)
    if world.deleted_connections:
        left = Delivery.objects.filter(connection_id__in=world.deleted_connections).count()
        if left or Connection.objects.filter(pk__in=world.deleted_connections).exists():
            problems.append(f"deleted connections left {left} deliveries or their rows behind")
    return problems


def connection_problems(connection: Connection, identities_now: dict[str, dict]) -> list[str]:
    problems, name = [], f"connection {connection.pk} ({connection.stream_name})"
    records = received(connection.stream_name)
    deleted = connection.audience.is_deleted
    if deleted:
        deletions = [index for index, record in enumerate(records) if record.get("AudienceDeleted")]
        if deletions != [len(records) - 1]:
            problems.append(f"{name}: deletion records at {deletions} of {len(records)}")
        records = records[:-1] if deletions else records
    last: dict[str, dict] = {}
    wire: dict[str, list[tuple[bool, int]]] = defaultdict(list)
    for record in records:
        user_id = record["UserIdentities"]["CustomerId"]
        last[user_id] = record
        wire[user_id].append((record["IsMember"], int(record["MembershipChangedTimestamp"])))
    replayed = {user_id for user_id, record in last.items() if record["IsMember"]}
    members = {
        external_id
        for (external_id,) in Membership.objects.filter(audience=connection.audience, is_member=True).values_list(
            "user__external_id"
        )
    }
    # Once its audience is deleted, a connection's record of that is what counts: a resync still running then stops,
    # and later identity changes are not sent.
    if not deleted and replayed != members:
        problems.append(
            f"{name}: replaying the stream gives {len(replayed)} members, the audience has {len(members)}: "
            f"missing {sorted(members - replayed)[:5]}, extra {sorted(replayed - members)[:5]}"
        )
    stale = [user_id for user_id in members & replayed if last[user_id]["UserIdentities"] != identities_now[user_id]]
    if stale and not deleted:
        problems.append(f"{name}: the last record of {sorted(stale)[:5]} does not carry their current identities")
    expected: dict[str, list[tuple[bool, int]]] = defaultdict(list)
    for external_id, is_member, timestamp in (
        Delivery.objects.filter(connection=connection, status=Delivery.Status.DELIVERED)
        .exclude(kind=Delivery.Kind.AUDIENCE_DELETED)
        .order_by("pk")
        .values_list("user__external_id", "is_member", "timestamp")
    ):
        expected[external_id].append((bool(is_member), timestamp))
    disordered = [user_id for user_id in set(wire) | set(expected) if wire[user_id] != expected[user_id]]
    if disordered:
        problems.append(f"{name}: the records of {sorted(disordered)[:5]} differ from their deliveries in order")
    pending = Delivery.objects.filter(connection=connection, status=Delivery.Status.PENDING).count()
    if pending or connection.resync_running:
        problems.append(f"{name}: {pending} pending deliveries, resync running: {connection.resync_running}")
    return problems


def summary(problems: list[str], each: int = 4) -> str:
    """The first few problems of each kind (the text before the first digit or colon names the kind)."""
    kinds: dict[str, list[str]] = defaultdict(list)
    for problem in problems:
        kind = problem.split(":")[0].rstrip("0123456789 ()-_,'") if not problem.startswith("(") else "model"
        kinds[
            "model" if problem.startswith("(") else kind.split(" ")[0] + " " + problem.split(": ", 1)[-1][:20]
        ].append(problem)
    return "\n".join(
        f"[{len(items)}× {kind}]\n  " + "\n  ".join(item[:400] for item in items[:each])
        for kind, items in kinds.items()
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_concurrent_clients_operators_and_drains_lose_nothing(seed, emulator, shards, monkeypatch):
    monkeypatch.setattr(resync_stage, "RESYNC_PAGE_SIZE", 7)  # many short resync pages, each its own transaction
    configuration = configuration_create(
        name="Model", access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY, endpoint_url=emulator
    )
    key = api_key_create(name="model", scopes=["ingest", "manage"])[1]
    world = World(rng=random.Random(seed), configuration_id=configuration.pk)
    setup = Client(world, key, seed)
    for _ in range(3):
        setup.audience_create()
    for audience_id in world.audiences:
        with world.lock:
            world.users += [f"s{audience_id}-{n}" for n in range(20)]
        joins = [(user_id, Change(True, world.timestamp())) for user_id in world.users[-20:]]
        started = time.monotonic()
        setup.call(
            "post",
            f"/api/v1/audiences/{audience_id}/changes",
            {"changes": [{"user_id": user_id, "is_member": True, "timestamp": change.timestamp,
                          "identities": identities(user_id, world)} for user_id, change in joins]},
            expected=(202,),
        )  # fmt: skip
        world.history.batch_accepted(audience_id, joins, started, time.monotonic())
        setup.connection_create()

    stop = threading.Event()
    drainers = [threading.Thread(target=drains, args=(world, stop, seed * 100 + n)) for n in range(DRAINS)]
    clients = [
        threading.Thread(target=Client(world, key, seed * 1000 + n).run, args=(OPS_PER_CLIENT,)) for n in range(CLIENTS)
    ]
    for thread in drainers + clients:
        thread.start()
    for thread in clients:
        thread.join(300)
    stop.set()
    for thread in drainers:
        thread.join(60)
    assert not any(thread.is_alive() for thread in clients + drainers), "a thread hung"

    drain_everything(world)
    purge_deleted_connections()
    problems = check(world)
    assert not problems, f"{len(problems)} problems (answers {dict(world.answers)}):\n" + summary(problems)
