"""The throughput and resync benchmark: `make bench`.

It starts its own deployment on 127.0.0.1 (a private PostgreSQL and Redis, the web app under gunicorn, Celery workers
and beat, and the Firehose emulator, which only counts and keeps records), then measures:

- ingest: changes/s accepted by POST /api/v1/audiences/{id}/changes in batches of 1,000;
- deliver: records/s from a backlog of pending changes until the emulator has acknowledged them all;
- end to end: changes/s from the first API call to the last acknowledged record;
- resync: the time to resync a large audience, and each process's peak RSS.

It prints one table and writes it as JSON to bench/results/latest.json. Sizes are options (see --help).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from tests.faults.cluster import Cluster, cluster_start  # noqa: E402

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


class Bench:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.rows: list[dict] = []
        self.configuration_id = self._configuration()

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

    def ingest(self, audience_id: int, total: int, *, timestamp: int = 1_700_000_000) -> float:
        started = time.monotonic()
        for first in range(0, total, 1000):
            status, body = self.cluster.api(
                "POST",
                f"/audiences/{audience_id}/changes",
                changes_body(first, min(1000, total - first), is_member=True, timestamp=timestamp),
            )
            assert status == 202, body
        return time.monotonic() - started

    def wait_for_records(self, streams: list[str], total_each: int, timeout: float = 1800) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            counts = self.cluster.emulator.stats()["streams"]
            if all(counts.get(stream, {}).get("records", 0) >= total_each for stream in streams):
                return time.monotonic() - started
            time.sleep(0.2)
        raise TimeoutError(f"records did not all arrive: {self.cluster.emulator.stats()['streams']}")

    def row(self, name: str, value: float, unit: str, **details: object) -> None:
        self.rows.append({"row": name, "value": round(value, 1), "unit": unit, **details})
        print(f"  {name:<28} {value:>12,.1f} {unit}  {details if details else ''}", flush=True)

    # --- measurements -----------------------------------------------------------------------------------------

    def measure_ingest(self, total: int) -> None:
        audience_id = self.audience("bench-ingest")
        seconds = self.ingest(audience_id, total)
        self.row("ingest", total / seconds, "changes/s", changes=total, seconds=round(seconds, 2))

    def measure_deliver(self, total: int, connections: int) -> None:
        audience_id = self.audience(f"bench-deliver-{connections}")
        streams = [f"deliver-{connections}-{n}" for n in range(connections)]
        ids = [self.connect(audience_id, stream) for stream in streams]
        for connection_id in ids:
            self.cluster.api("POST", f"/connections/{connection_id}/pause")
        self.ingest(audience_id, total)
        started = time.monotonic()
        for connection_id in ids:
            self.cluster.api("POST", f"/connections/{connection_id}/resume")
        self.wait_for_records(streams, total)
        seconds = time.monotonic() - started
        self.row(
            f"deliver, {connections} connection{'s' if connections > 1 else ''}",
            total * connections / seconds,
            "records/s",
            backlog=total * connections,
            seconds=round(seconds, 2),
        )

    def measure_end_to_end(self, total: int) -> None:
        audience_id = self.audience("bench-end-to-end")
        stream = "end-to-end"
        self.connect(audience_id, stream)
        started = time.monotonic()
        self.ingest(audience_id, total)
        self.wait_for_records([stream], total)
        seconds = time.monotonic() - started
        self.row("end to end", total / seconds, "changes/s", changes=total, seconds=round(seconds, 2))

    def measure_resync(self, members: int) -> None:
        audience_id = self.audience("bench-resync")
        seed_members(self.cluster, audience_id, members)
        stream = "resync"
        for process in self.cluster.processes():
            process.reset_peak_rss()
        started = time.monotonic()
        self.connect(audience_id, stream)  # an active new connection starts with a full sync
        self.wait_for_records([stream], members)
        seconds = time.monotonic() - started
        peaks = {process.name: process.peak_rss_mb() for process in self.cluster.processes()}
        self.row("resync", seconds, "s", members=members, peak_rss_mb=peaks)


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


def main() -> None:
    parser = argparse.ArgumentParser(description="Throughput and resync benchmark.")
    parser.add_argument("--ingest", type=int, default=100_000, help="changes for the ingest row")
    parser.add_argument("--deliver", type=int, default=100_000, help="pending changes for the deliver rows")
    parser.add_argument("--end-to-end", type=int, default=100_000)
    parser.add_argument("--resync", type=int, default=200_000, help="members of the resynced audience")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes (concurrency 1 each)")
    args = parser.parse_args()

    print("Starting PostgreSQL, Redis, the Firehose emulator, gunicorn, Celery workers and beat...", flush=True)
    cluster = cluster_start(settings=BENCH_SETTINGS)
    try:
        cluster.start_web()
        cluster.start_beat()
        cluster.start_workers(args.workers, concurrency=1)
        bench = Bench(cluster)
        print(f"Measuring on {os.cpu_count()} cores:", flush=True)
        bench.measure_ingest(args.ingest)
        bench.measure_deliver(args.deliver, 1)
        bench.measure_deliver(args.deliver, 4)
        bench.measure_end_to_end(args.end_to_end)
        bench.measure_resync(args.resync)
    finally:
        cluster.close()

    results = {
        "cores": os.cpu_count(),
        "workers": args.workers,
        "rows": bench.rows,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = BASE_DIR / "bench" / "results" / "latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(f"{'row':<28} {'value':>14}  unit")
    for row in bench.rows:
        print(f"{row['row']:<28} {row['value']:>14,.1f}  {row['unit']}")
    print(f"\nWritten to {out.relative_to(BASE_DIR)}")


if __name__ == "__main__":
    main()
