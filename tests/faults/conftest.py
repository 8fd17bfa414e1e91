from __future__ import annotations

from collections.abc import Iterator

import pytest

from .cluster import Cluster, available, cluster_start

RESULTS: list[dict] = []

FAULT_SETTINGS = {
    "FIREHOSE_CONNECT_TIMEOUT_SECONDS": "1",
    "FIREHOSE_READ_TIMEOUT_SECONDS": "3",
    "FIREHOSE_BACKOFF_BASE_SECONDS": "0.1",
    "FIREHOSE_BACKOFF_CAP_SECONDS": "1",
    "FIREHOSE_RETRY_LIMIT": "10",
    "DRAIN_LEASE_SECONDS": "5",
    "DRAIN_TIME_BUDGET_SECONDS": "5",
    "SWEEP_INTERVAL_SECONDS": "0.5",
}


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if not available():
        pytest.skip("the fault suite needs PostgreSQL's server binaries and redis-server")
    cluster = cluster_start(settings=FAULT_SETTINGS)
    try:
        cluster.start_web()
        cluster.start_beat()
        yield cluster
    finally:
        cluster.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not RESULTS:
        return
    terminalreporter.section("fault scenarios")
    header = (
        f"{'scenario':<34} {'accepted':>9} {'expected':>9} {'arrived':>9} {'lost':>6} {'dupes':>7} {'dupe %':>7} "
        f"{'order':>6} {'time s':>7}"
    )
    terminalreporter.write_line(header)
    for row in RESULTS:
        terminalreporter.write_line(
            f"{row['scenario']:<34} {row['accepted']:>9} {row['expected']:>9} {row['arrived']:>9} {row['lost']:>6} "
            f"{row['duplicates']:>7} {row['duplicate_percent']:>7.3f} {'ok' if row['order_ok'] else 'BROKEN':>6} "
            f"{row['seconds']:>7.1f}"
        )
