"""The throughput, latency and resync benchmark: `make bench`.

It starts its own deployment on 127.0.0.1 (a private PostgreSQL and Redis, the web app under gunicorn, Celery workers
and beat, and the Firehose emulator, which only counts and keeps records), then measures:

- ingest: changes/s accepted by POST /api/v1/audiences/{id}/changes in batches of 1,000;
- deliver: records/s from a backlog of pending changes until the emulator has acknowledged them all, for 1 and for
  4 connections (backlog written through the API), then on one connection for backlogs of growing size written
  straight into PostgreSQL (`--backlogs`), so that a cost growing faster than linearly shows as falling records/s;
- end to end: changes/s from the first API call to the last acknowledged record;
- latency: p50 and p99 from the API's 202 to the emulator's arrival time of each record, at a steady rate;
- resync: the time to resync a large audience, and each process's peak RSS;
- baseline: the naive design (bench/naive.py: one Celery task and one PutRecord per change) and our ratio to it;
- scale-out: one connection's backlog drained with 1 worker process, then with 2.

It prints one table and writes it as JSON to bench/results/latest.json. Sizes are options (see --help).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.profile import Profiler, cpu_used  # noqa: E402
from tests.faults.cluster import PG_BIN, Cluster, Process, cluster_start  # noqa: E402
from tests.support.localhost import BIN, wait_for  # noqa: E402

BENCH_SETTINGS = {
    "FIREHOSE_BACKOFF_BASE_SECONDS": "0.1",
    "FIREHOSE_BACKOFF_CAP_SECONDS": "2",
    "SWEEP_INTERVAL_SECONDS": "1",
    "LOG_LEVEL": "WARNING",
}


def changes_body(first_user: int, count: int, *, is_member: bool, timestamp: int) -> dict:
    return {
        "changes": [
            {
                "user_id": f"user-{number:07d}",
                "is_member": is_member,
                "identities": {"CustomerId": f"user-{number:07d}", "Email": f"user{number}@example.com"},
                "timestamp": timestamp,
            }
            for number in range(first_user, first_user + count)
        ]
    }


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class Bench:
    def __init__(self, cluster: Cluster, profiler: Profiler, clients: int):
        self.cluster = cluster
        self.clients = clients
        self.profiler = profiler
        self.cpu: dict[str, float] = {}  # CPU seconds per kind of process during the current measurement
        self.rows: list[dict] = []
        self.seeded = 0
        self.configuration_id = self._configuration()
        self.control = celery_control(cluster.redis.url)

    def _configuration(self) -> int:
        status, body = self.cluster.api(
            "POST",
            "/configurations",
            {
                "name": "bench",
                "access_key_id": "AKIABENCHMARK0000001",
                "secret_access_key": "bench/secret",
                "endpoint_url": self.cluster.emulator.endpoint,
            },
        )
        assert status == 201, body
        return body["id"]

    def audience(self, name: str) -> int:
        status, body = self.cluster.api("POST", "/audiences", {"internal_name": name})
        assert status == 201, body
        return body["id"]

    def connect(self, audience_id: int, stream: str) -> int:
        status, body = self.cluster.api(
            "POST",
            "/connections",
            {"audience": audience_id, "configuration": self.configuration_id, "stream_name": stream},
        )
        assert status == 201, body
        return body["id"]

    def operate(self, connection_id: int, action: str) -> None:
        status, body = self.cluster.api("POST", f"/connections/{connection_id}/{action}")
        assert status == 200, (status, body)

    def ingest(self, audience_id: int, total: int, *, timestamp: int = 1_700_000_000) -> float:
        """Post `total` changes of new users in requests of 1,000, from `self.clients` concurrent clients."""

        def post(first: int) -> None:
            status, body = self.cluster.api(
                "POST",
                f"/audiences/{audience_id}/changes",
                changes_body(first, min(1000, total - first), is_member=True, timestamp=timestamp),
            )
            assert status == 202, body

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=self.clients) as pool:
            for future in [pool.submit(post, first) for first in range(0, total, 1000)]:
                future.result()
        return time.monotonic() - started

    def wait_for_records(self, streams: list[str], total_each: int, timeout: float = 1800) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            counts = self.cluster.emulator.stats()["streams"]
            if all(counts.get(stream, {}).get("records", 0) >= total_each for stream in streams):
                return time.monotonic() - started
            time.sleep(0.05)
        raise TimeoutError(f"records did not all arrive: {self.cluster.emulator.stats()['streams']}")

    def records_with_times(self, stream: str) -> list[tuple[float, bytes]]:
        url = f"http://127.0.0.1:{self.cluster.emulator.control_port}/records?stream={stream}&with_times=1"
        with urllib.request.urlopen(url, timeout=120) as response:
            return [(at, base64.b64decode(data)) for at, data in json.loads(response.read())]

    def row(self, name: str, value: float, unit: str, **details: object) -> None:
        if self.cpu:
            details["cpu_s"] = dict(self.cpu)
            self.cpu = {}
        self.rows.append({"row": name, "value": round(value, 2 if value < 10 else 1), "unit": unit, **details})
        print(f"  {name:<30} {value:>12,.1f} {unit:<10} {note(details)}", flush=True)

    def value_of(self, name: str) -> float | None:
        return next((row["value"] for row in self.rows if row["row"] == name), None)

    def time_drain(self, connection_ids: list[int], streams: list[str], total_each: int) -> tuple[float, float]:
        """Resume paused connections and time until the emulator has every record of their backlogs.

        Returns the seconds until all had arrived, and until half had: a drain that slows down as it goes shows
        as a second half slower than the first."""
        with cpu_used(self.cluster) as self.cpu, self.profiler.during(f"deliver-{len(connection_ids)}x{total_each}"):
            return self._time_drain(connection_ids, streams, total_each)

    def _time_drain(self, connection_ids: list[int], streams: list[str], total_each: int) -> tuple[float, float]:
        started = time.monotonic()
        for connection_id in connection_ids:
            self.operate(connection_id, "resume")
        half = None
        while True:
            counts = self.cluster.emulator.stats()["streams"]
            arrived = min(counts.get(stream, {}).get("records", 0) for stream in streams)
            elapsed = time.monotonic() - started
            if half is None and arrived >= total_each / 2:
                half = elapsed
            if arrived >= total_each:
                return elapsed, half
            if elapsed > 1800:
                raise TimeoutError(f"records did not all arrive: {counts}")
            time.sleep(0.05)

    # --- measurements -----------------------------------------------------------------------------------------

    def measure_ingest(self, total: int) -> None:
        progress(f"ingest: {total:,} changes through the API in batches of 1,000, {self.clients} clients")
        audience_id = self.audience("bench-ingest")
        connection_id = self.connect(audience_id, "ingest")
        self.operate(connection_id, "pause")  # its deliveries are written, not sent
        with cpu_used(self.cluster) as self.cpu, self.profiler.during("ingest"):
            seconds = self.ingest(audience_id, total)
        self.row(
            "ingest",
            total / seconds,
            "changes/s",
            changes=total,
            seconds=round(seconds, 2),
            clients=self.clients,
            connections="1 (paused)",
        )

    def measure_deliver(self, total: int, connections: int) -> None:
        progress(f"deliver: {total:,} changes through the API on {connections} paused connection(s), then resume")
        audience_id = self.audience(f"bench-deliver-{connections}")
        streams = [f"deliver-{connections}-{n}" for n in range(connections)]
        ids = [self.connect(audience_id, stream) for stream in streams]
        for connection_id in ids:
            self.operate(connection_id, "pause")
        self.ingest(audience_id, total)
        seconds, _ = self.time_drain(ids, streams, total)
        self.row(
            f"deliver, {connections} connection{'s' if connections > 1 else ''}",
            total * connections / seconds,
            "records/s",
            backlog=total * connections,
            seconds=round(seconds, 2),
        )

    def seeded_connection(self, name: str, size: int) -> tuple[int, str, float]:
        """A paused connection with `size` pending changes written straight into PostgreSQL."""
        self.seeded += 1
        stream = f"{name}-{self.seeded}"  # a stream of its own, also when a size comes twice
        audience_id = self.audience(stream)
        connection_id = self.connect(audience_id, stream)  # its initial sync has no member to send
        self.operate(connection_id, "pause")
        started = time.monotonic()
        seed_backlog(self.cluster, audience_id, connection_id, size)
        return connection_id, stream, time.monotonic() - started

    def measure_backlog(self, size: int) -> None:
        progress(f"deliver, {short(size)} pending: seeding {size:,} users, changes and deliveries in PostgreSQL")
        connection_id, stream, seeded = self.seeded_connection(f"backlog-{size}", size)
        progress(f"deliver, {short(size)} pending: seeded in {seeded:.1f} s; resuming the connection")
        seconds, half = self.time_drain([connection_id], [stream], size)
        self.row(
            f"deliver, {short(size)} pending",
            size / seconds,
            "records/s",
            backlog=size,
            seconds=round(seconds, 2),
            first_half_per_s=round(size / 2 / half),
            second_half_per_s=round(size / 2 / max(seconds - half, 1e-3)),
            seed_seconds=round(seeded, 1),
        )

    def measure_end_to_end(self, total: int) -> None:
        progress(f"end to end: {total:,} changes from the first API call to the last acknowledged record")
        audience_id = self.audience("bench-end-to-end")
        stream = "end-to-end"
        self.connect(audience_id, stream)
        with cpu_used(self.cluster) as self.cpu, self.profiler.during("end-to-end"):
            started = time.monotonic()
            self.ingest(audience_id, total)
            self.wait_for_records([stream], total)
            seconds = time.monotonic() - started
        self.row(
            "end to end", total / seconds, "changes/s", changes=total, seconds=round(seconds, 2), clients=self.clients
        )

    def measure_latency(self, seconds: float, rate: int, per_request: int = 100, users: int = 10_000) -> None:
        """Changes at a steady rate, in paced requests; latency is from the 202 to the record's arrival.

        Request i carries `per_request` distinct users of a pool, with timestamp T0 + i: each change is a unique
        (user, timestamp), which its record carries. The pool is walked round and round, alternately joining and
        leaving, so after the first pass the changes are to existing users.
        """
        requests = max(1, round(seconds * rate / per_request))
        interval = per_request / rate
        progress(
            f"latency: {rate:,} changes/s for {seconds:g} s ({requests:,} requests of {per_request}, one every "
            f"{interval * 1000:.0f} ms)"
        )
        audience_id = self.audience("bench-latency")
        stream = "latency"
        self.connect(audience_id, stream)
        accepted_at: dict[tuple[str, str], float] = {}
        counts = {"accepted": 0, "ignored": 0}
        lock = threading.Lock()
        base_timestamp = 1_700_000_000

        def send(index: int) -> None:
            first = (index * per_request) % users
            numbers = [(first + offset) % users for offset in range(per_request)]
            joining = (index * per_request // users) % 2 == 0
            timestamp = base_timestamp + index
            body = {
                "changes": [
                    {
                        "user_id": f"lat-{number:05d}",
                        "is_member": joining,
                        "identities": {"CustomerId": f"lat-{number:05d}", "Email": f"lat{number}@example.com"},
                        "timestamp": timestamp,
                    }
                    for number in numbers
                ]
            }
            status, answer = self.cluster.api("POST", f"/audiences/{audience_id}/changes", body)
            answered = time.time()
            assert status == 202, (status, answer)
            with lock:
                counts["accepted"] += answer["accepted"]
                counts["ignored"] += answer["ignored"]
                for number in numbers:
                    accepted_at[(f"lat-{number:05d}", str(timestamp))] = answered

        started = time.monotonic()
        behind = 0.0
        with ThreadPoolExecutor(max_workers=16) as pool:
            futures = []
            for index in range(requests):
                due = started + index * interval
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                else:
                    behind = max(behind, now - due)
                futures.append(pool.submit(send, index))
                if index and index % (requests // 6 or 1) == 0:
                    progress(f"latency: {index:,} of {requests:,} requests sent")
            for future in futures:
                future.result()
        sending = time.monotonic() - started
        total = counts["accepted"]
        progress(f"latency: {total:,} changes accepted in {sending:.1f} s; waiting for the last records")
        self.wait_for_records([stream], total)
        first_arrival: dict[tuple[str, str], float] = {}
        for at, data in self.records_with_times(stream):
            record = json.loads(data)
            first_arrival.setdefault((record["UserIdentities"]["CustomerId"], record["MembershipChangedTimestamp"]), at)
        latencies = sorted(first_arrival[key] - accepted_at[key] for key in accepted_at if key in first_arrival)
        details = {
            "offered_changes_per_s": rate,
            "achieved_changes_per_s": round(total / sending, 1),
            "changes": total,
            "ignored": counts["ignored"],
            "records": len(latencies),
            "max_pacing_lag_ms": round(behind * 1000, 1),
        }
        self.row("latency p50", percentile(latencies, 0.50) * 1000, "ms", **details)
        self.row(
            "latency p99", percentile(latencies, 0.99) * 1000, "ms", max_ms=round(latencies[-1] * 1000, 1), **details
        )

    def measure_resync(self, members: int) -> None:
        progress(f"resync: {members:,} members seeded in PostgreSQL, then a new connection's full sync")
        audience_id = self.audience("bench-resync")
        seed_members(self.cluster, audience_id, members)
        stream = "resync"
        for process in self.cluster.processes():
            process.reset_peak_rss()
        with cpu_used(self.cluster) as self.cpu, self.profiler.during("resync"):
            started = time.monotonic()
            self.connect(audience_id, stream)  # an active new connection starts with a full sync
            self.wait_for_records([stream], members)
            seconds = time.monotonic() - started
        peaks = {process.name: process.peak_rss_mb() for process in self.cluster.processes()}
        self.row("resync", seconds, "s", members=members, peak_rss_mb=peaks)

    def measure_baseline(self, total: int, processes: int) -> None:
        """The naive design: one Celery task per change, each sending one PutRecord with a fresh JSON record."""
        progress(f"baseline: the naive design (bench/naive.py) on {total:,} changes, {processes} worker process(es)")
        broker = self.cluster.redis.url.rsplit("/", 1)[0] + "/1"  # its own Redis database: our workers never see it
        worker = Process(
            "naive",
            [str(BIN / "celery"), "-A", "bench.naive", "worker", "-l", "warning", "-n", "naive@%h", "--concurrency",
             str(processes), "--without-gossip", "--without-mingle"],
            env={
                **{key: value for key, value in self.cluster.env.items() if key != "CELERY_BROKER_URL"},
                "NAIVE_BROKER_URL": broker,
            },
            log_dir=self.cluster.root,
        ).start()  # fmt: skip
        os.environ["NAIVE_BROKER_URL"] = broker
        from bench import naive

        naive.app.conf.broker_url = broker
        try:
            wait_for(lambda: naive.app.control.ping(timeout=0.5), timeout=60, what="the naive worker")
            stream = "naive"
            endpoint = self.cluster.emulator.endpoint
            started = time.monotonic()
            with naive.app.producer_pool.acquire(block=True) as producer:
                for number in range(total):
                    naive.put_change.apply_async(
                        (endpoint, stream, 0, "bench-naive", True,
                         {"CustomerId": f"naive-{number:07d}", "Email": f"naive{number}@example.com"}, 1_700_000_000),
                        producer=producer,
                    )  # fmt: skip
            queued = time.monotonic() - started
            self.wait_for_records([stream], total)
            seconds = time.monotonic() - started
        finally:
            worker.stop()
        self.row(
            "baseline (naive)",
            total / seconds,
            "records/s",
            changes=total,
            seconds=round(seconds, 2),
            queued_seconds=round(queued, 2),
            worker_processes=processes,
            design="1 Celery task + 1 PutRecord per change",
        )
        ours = self.value_of("deliver, 1 connection")
        if ours:
            self.row("ours / naive", ours / (total / seconds), "x", ours="deliver, 1 connection")

    def measure_scale_out(self, size: int) -> None:
        """One connection's backlog with 1 worker process (the others stopped), then with 2."""
        workers = self.cluster.workers
        if len(workers) < 2:
            progress("scale-out: skipped (needs --workers 2 or more)")
            return
        progress(f"scale-out: {size:,} pending on one connection with 1 worker process")
        for worker in workers[1:]:
            worker.stop()
        wait_for(lambda: len(self.control.ping(timeout=0.5)) == 1, timeout=60, what="one worker only")
        connection_id, stream, _ = self.seeded_connection("scale-out-1", size)
        seconds, _ = self.time_drain([connection_id], [stream], size)
        self.row("scale-out, 1 worker", size / seconds, "records/s", backlog=size, seconds=round(seconds, 2))

        progress(f"scale-out: {size:,} pending on one connection with 2 worker processes")
        workers[1].start()
        wait_for(lambda: len(self.control.ping(timeout=0.5)) == 2, timeout=60, what="two workers")
        connection_id, stream, _ = self.seeded_connection("scale-out-2", size)
        seconds, _ = self.time_drain([connection_id], [stream], size)
        self.row("scale-out, 2 workers", size / seconds, "records/s", backlog=size, seconds=round(seconds, 2))
        for worker in workers[2:]:
            worker.start()


def celery_control(broker_url: str) -> Any:
    """A bare Celery app on the deployment's broker, to ping its workers (it imports nothing of the product)."""
    from celery import Celery

    return Celery("bench-control", broker=broker_url).control


def short(number: int) -> str:
    for divisor, suffix in ((1_000_000, "M"), (1_000, "k")):
        if number >= divisor and number % (divisor // 10) == 0:
            return f"{number / divisor:g}{suffix}"
    return f"{number:,}"


def note(details: dict) -> str:
    parts = []
    for key, value in details.items():
        if key == "cpu_s":
            parts.append("CPU s: " + " ".join(f"{kind} {seconds:g}" for kind, seconds in value.items()))
        elif isinstance(value, dict):
            name, peak = max(value.items(), key=lambda item: item[1])
            parts.append(f"{key} max {peak} ({name})")
        else:
            parts.append(f"{key}={value:,}" if isinstance(value, int) else f"{key}={value}")
    return ", ".join(parts)


# --- seeding straight into PostgreSQL -----------------------------------------------------------------------------


def sql_rows(cluster: Cluster, sql: str) -> list[list[str]]:
    result = subprocess.run(
        [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(cluster.postgres.port), "-U", "postgres", "-d", "firehose",
         "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-F", "\t", "-c", sql],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return [line.split("\t") for line in result.stdout.splitlines() if line]


SEEDED_COLUMNS = {
    "audiences_user": {"external_id", "identities", "created_at", "updated_at"},
    "audiences_membership": {"audience_id", "user_id", "is_member", "last_changed_timestamp", "updated_at"},
    "audiences_membershipchange": {
        "audience_id", "user_id", "kind", "timestamp", "identities", "previous_identities", "created_at",
    },
    "integrations_delivery": {
        "connection_id", "shard", "kind", "change_id", "user_id", "is_member", "uses_previous_identities",
        "timestamp", "status", "attempts", "next_attempt_at", "last_error", "created_at",
    },
}  # fmt: skip


def check_seeded_columns(cluster: Cluster) -> None:
    """Fail clearly when a model gained a NOT NULL column without a database default that the seed does not fill."""
    tables = ", ".join(f"'{table}'" for table in SEEDED_COLUMNS)
    rows = sql_rows(
        cluster,
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
        f"AND table_name IN ({tables}) AND is_nullable = 'NO' AND column_default IS NULL AND is_identity = 'NO' "
        "AND is_generated = 'NEVER'",
    )
    missing = [f"{table}.{column}" for table, column in rows if column not in SEEDED_COLUMNS[table]]
    if missing:
        raise SystemExit(f"bench/run.py seeds rows without these NOT NULL columns: {', '.join(missing)}")


def seed_backlog(cluster: Cluster, audience_id: int, connection_id: int, size: int) -> None:
    """`size` users who joined the audience, each with its change and a pending delivery on the connection, written
    with generate_series as the API would have written them (deliveries in change order)."""
    prefix = f"seed{audience_id}-"
    # The rows are consistent by construction: skip the per-row foreign key triggers (this session only).
    sql = f"""
        SET session_replication_role = replica;
        INSERT INTO audiences_user (external_id, identities, created_at, updated_at)
        SELECT '{prefix}' || n, '{{"CustomerId": "{prefix}' || n || '", "Email": "{prefix}' || n || '@example.com"}}',
               now(), now()
        FROM generate_series(1, {size}) AS n;
        INSERT INTO audiences_membership (audience_id, user_id, is_member, last_changed_timestamp, updated_at)
        SELECT {audience_id}, id, true, 1700000000, now() FROM audiences_user WHERE external_id LIKE '{prefix}%';
        INSERT INTO audiences_membershipchange
            (audience_id, user_id, kind, "timestamp", identities, previous_identities, created_at)
        SELECT {audience_id}, id, 1, 1700000000, identities, NULL, now()
        FROM audiences_user WHERE external_id LIKE '{prefix}%' ORDER BY id;
        INSERT INTO integrations_delivery
            (connection_id, shard, kind, change_id, user_id, is_member, uses_previous_identities, "timestamp",
             status, attempts, next_attempt_at, last_error, created_at)
        SELECT {connection_id}, user_id % {cluster.env["DELIVERY_SHARDS"]}, 1, id, user_id, true, false,
               "timestamp", 1, 0, now(), '', now()
        FROM audiences_membershipchange WHERE audience_id = {audience_id} ORDER BY id;
        UPDATE audiences_audience SET member_count = member_count + {size} WHERE id = {audience_id};
    """
    cluster.postgres.psql(sql)
    # What autovacuum would do shortly after such a load, done now rather than in the middle of the measurement:
    # the planner sees the new rows, and the pages are marked visible with their hint bits set.
    for table in SEEDED_COLUMNS:
        cluster.postgres.psql(f"VACUUM (ANALYZE) {table}")


def seed_members(cluster: Cluster, audience_id: int, members: int) -> None:
    """Members written straight into PostgreSQL with generate_series: the benchmark measures the resync, not ingest."""
    sql = f"""
        INSERT INTO audiences_user (external_id, identities, created_at, updated_at)
        SELECT 'member-' || n, '{{"CustomerId": "member-' || n || '"}}', now(), now()
        FROM generate_series(1, {members}) AS n
        ON CONFLICT (external_id) DO NOTHING;
        INSERT INTO audiences_membership (audience_id, user_id, is_member, last_changed_timestamp, updated_at)
        SELECT {audience_id}, id, true, 1700000000, now() FROM audiences_user WHERE external_id LIKE 'member-%';
        UPDATE audiences_audience SET member_count = {members} WHERE id = {audience_id};
    """
    cluster.postgres.psql(sql)


def sizes(text: str) -> list[int]:
    return [int(item.replace("_", "")) for item in text.split(",") if item.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Throughput, latency and resync benchmark.",
        epilog="The defaults are the full sizes and take about 6 minutes on 2 cores; smaller sizes give a quick look "
        "(e.g. --deliver 20000 --backlogs 10000 --resync 100000 --latency-seconds 10).",
    )
    parser.add_argument("--ingest", type=int, default=100_000, help="changes for the ingest row")
    parser.add_argument("--clients", type=int, default=2, help="concurrent API clients for ingest and end to end")
    parser.add_argument(
        "--deliver", type=int, default=100_000, help="pending changes (written through the API) per connection"
    )
    parser.add_argument(
        "--backlogs",
        type=sizes,
        default=sizes("10000,100000,1000000"),
        help="comma-separated backlog sizes seeded in PostgreSQL and drained on one connection",
    )
    parser.add_argument("--end-to-end", type=int, default=100_000)
    parser.add_argument("--latency-seconds", type=float, default=60, help="0 skips the latency rows")
    parser.add_argument("--latency-rate", type=int, default=1000, help="changes/s, in requests of 100")
    parser.add_argument("--resync", type=int, default=1_000_000, help="members of the resynced audience")
    parser.add_argument("--baseline", type=int, default=10_000, help="changes sent by the naive design; 0 skips")
    parser.add_argument("--scale-out", type=int, default=100_000, help="backlog for the scale-out rows; 0 skips")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes (concurrency 1 each)")
    parser.add_argument(
        "--profile", action="store_true", help="sample gunicorn and the workers with py-spy and print where time went"
    )
    args = parser.parse_args()

    began = time.monotonic()
    # A SIGTERM (timeout, kill) unwinds like Ctrl-C, so that the private PostgreSQL, Redis and processes are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    progress("Starting PostgreSQL, Redis, the Firehose emulator, gunicorn, Celery workers and beat...")
    # As the README advises: as many shards per connection as worker processes.
    cluster = cluster_start(settings={**BENCH_SETTINGS, "DELIVERY_SHARDS": str(args.workers)})
    try:
        check_seeded_columns(cluster)
        cluster.start_web()
        cluster.start_beat()
        cluster.start_workers(args.workers, concurrency=1)
        profiler = Profiler(cluster, BASE_DIR / "bench" / "results" / "profile", args.profile)
        bench = Bench(cluster, profiler, args.clients)
        wait_for(lambda: len(bench.control.ping(timeout=0.5)) == args.workers, timeout=60, what="the workers")
        progress(f"Measuring on {os.cpu_count()} cores with {args.workers} worker process(es):")
        if args.ingest:
            bench.measure_ingest(args.ingest)
        if args.deliver:
            bench.measure_deliver(args.deliver, 1)
            bench.measure_deliver(args.deliver, 4)
        for size in args.backlogs:
            bench.measure_backlog(size)
        if args.end_to_end:
            bench.measure_end_to_end(args.end_to_end)
        if args.latency_seconds:
            bench.measure_latency(args.latency_seconds, args.latency_rate)
        if args.resync:
            bench.measure_resync(args.resync)
        if args.baseline:
            bench.measure_baseline(args.baseline, args.workers)
        if args.scale_out:
            bench.measure_scale_out(args.scale_out)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        cluster.close()

    results = {
        "cores": os.cpu_count(),
        "workers": args.workers,
        "options": vars(args),
        "rows": bench.rows,
        "seconds": round(time.monotonic() - began, 1),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = BASE_DIR / "bench" / "results" / "latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(f"{os.cpu_count()} cores, {args.workers} worker processes, {results['seconds']:.0f} s in all")
    print(f"{'row':<30} {'value':>12}  {'unit':<10} notes")
    for row in bench.rows:
        details = {key: value for key, value in row.items() if key not in ("row", "value", "unit")}
        print(f"{row['row']:<30} {row['value']:>12,.1f}  {row['unit']:<10} {note(details)}")
    bench.profiler.print()
    print(f"\nWritten to {out.relative_to(BASE_DIR)}")


if __name__ == "__main__":
    main()
