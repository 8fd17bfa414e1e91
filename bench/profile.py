"""Where the time goes during a benchmark row: CPU seconds per process kind, and (with --profile) py-spy samples
of the Python processes, summed by the project function and by the library they were in."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.faults.cluster import Cluster

BASE_DIR = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROJECT_PACKAGES = ("integrations/", "audiences/", "api/", "project/")


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _tree_ticks(root: int) -> int:
    """CPU ticks of a process tree: the root with its reaped children, and every live descendant."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields:
                parents[int(entry.name)] = int(fields[1])
    fields = _stat(root)
    if not fields:
        return 0
    ticks = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor and ancestor != root and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == root and pid != root:
            ticks += sum(int(value) for value in _stat(pid)[11:13])
    return ticks


def _roots(cluster: Cluster) -> dict[str, list[int]]:
    roots: dict[str, list[int]] = collections.defaultdict(list)
    for process in [*cluster.processes(), cluster.emulator.process]:
        if process.popen is not None:
            kind = "workers" if process.name.startswith("worker") else process.name
            roots[kind].append(process.popen.pid)
    postmaster = cluster.postgres.data / "postmaster.pid"
    if postmaster.exists():
        roots["postgres"].append(int(postmaster.read_text().split()[0]))
    if cluster.redis.process.popen is not None:
        roots["redis"].append(cluster.redis.process.popen.pid)
    return roots


def cpu_ticks(cluster: Cluster) -> dict[str, int]:
    return {kind: sum(_tree_ticks(pid) for pid in pids) for kind, pids in _roots(cluster).items()}


@contextmanager
def cpu_used(cluster: Cluster) -> Iterator[dict[str, float]]:
    """CPU seconds used by each kind of process while the block ran, children included (PostgreSQL's backends)."""
    used: dict[str, float] = {}
    before = cpu_ticks(cluster)
    yield used
    for kind, ticks in cpu_ticks(cluster).items():
        if ticks - before.get(kind, 0) > 0:
            used[kind] = round((ticks - before.get(kind, 0)) / CLOCK_TICKS, 1)


class Profiler:
    """py-spy on the workers and gunicorn during a row: `--profile` only (py-spy needs ptrace, root here)."""

    def __init__(self, cluster: Cluster, out_dir: Path, enabled: bool):
        self.cluster = cluster
        self.out_dir = out_dir
        self.py_spy = shutil.which("py-spy") or str(BASE_DIR / ".venv" / "bin" / "py-spy")
        self.enabled = enabled and Path(self.py_spy).exists()
        self.summaries: dict[str, dict[str, list[tuple[str, float]]]] = {}

    @contextmanager
    def during(self, label: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        spies = []
        for process in self.cluster.processes():
            if process.name == "beat" or process.popen is None:
                continue
            output = self.out_dir / f"{label}-{process.name}.txt"
            spies.append(
                (
                    process.name,
                    output,
                    subprocess.Popen(
                        [self.py_spy, "record", "--pid", str(process.popen.pid), "--subprocesses", "--rate", "100",
                         "--format", "raw", "--full-filenames", "--output", str(output), "--nonblocking"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    ),
                )
            )  # fmt: skip
        try:
            yield
        finally:
            for _, _, spy in spies:
                spy.send_signal(signal.SIGINT)
            summary = {}
            for name, output, spy in spies:
                try:
                    spy.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                if output.exists():
                    summary[name] = summarize(output)
            self.summaries[label] = summary

    def print(self) -> None:
        for label, processes in self.summaries.items():
            print(f"\nProfile of '{label}' (py-spy, share of samples while on CPU):")
            for name, top in processes.items():
                print(f"  {name}: " + ", ".join(f"{where} {share:.0f}%" for where, share in top))


def summarize(raw: Path, top: int = 10) -> list[tuple[str, float]]:
    """The functions of the project (inclusive) and the libraries at the leaf (exclusive) that took the most samples."""
    inclusive: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        seen = set()
        for frame in frames:
            where = _project_function(frame)
            if where and where not in seen:
                seen.add(where)
                inclusive[where] += samples
        leaves[f"[{_library(frames[-1])}]"] += samples
    if not total:
        return []
    ranked = [*inclusive.most_common(top // 2 + 2), *leaves.most_common(top // 2)]
    return [(where, 100 * samples / total) for where, samples in ranked]


def _project_function(frame: str) -> str | None:
    function, _, location = frame.partition(" (")
    path = location.rsplit(":", 1)[0]
    if ".venv" in path or "site-packages" in path or not path.startswith(str(BASE_DIR)):
        return None
    relative = path[len(str(BASE_DIR)) + 1 :]
    if not relative.startswith(PROJECT_PACKAGES):
        return None
    return f"{relative.removesuffix('.py').replace('/', '.')}.{function}"


def _library(frame: str) -> str:
    path = frame.partition(" (")[2].rsplit(":", 1)[0]
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if path.startswith(str(BASE_DIR)):
        return "project code"
    return f"stdlib {Path(path).stem}" if path else "native"
