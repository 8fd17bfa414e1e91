"""A whole deployment on 127.0.0.1 for fault tests: a private PostgreSQL and Redis (so that they can be stopped and
restarted without touching anything else), the Firehose emulator, the web app under gunicorn, Celery workers and beat.

Every process runs the product exactly as in production, configured through the environment.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..support.localhost import BASE_DIR, BIN, free_port, port_open, wait_for

PG_BIN = (
    Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1]).parent
    if glob.glob("/usr/lib/postgresql/*/bin/initdb")
    else None
)


def available() -> bool:
    return PG_BIN is not None and shutil.which("redis-server") is not None


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class Process:
    """A child process in its own process group, so that a kill reaches its children too."""

    def __init__(self, name: str, command: list[str], *, env: dict[str, str], log_dir: Path):
        self.name, self.command, self.env, self.log_dir = name, command, env, log_dir
        self.popen: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Process:
        self.starts += 1
        log = open(self.log_dir / f"{self.name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.popen = subprocess.Popen(
            self.command, cwd=BASE_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    def group_pids(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if self.popen and int(fields[2]) == self.popen.pid:  # field 5 of stat: the process group
                    pids.append(int(entry.name))
        return pids

    def reset_peak_rss(self) -> None:
        for pid in self.group_pids():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM, the peak resident set
            except OSError:
                pass

    def peak_rss_mb(self) -> float:
        """The largest peak resident set of any process in the group, in MB."""
        peak = 0
        for pid in self.group_pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
            except OSError:
                continue
        return round(peak / 1024, 1)

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash or the OOM killer would."""
        if self.popen and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


class PostgreSQL:
    def __init__(self, root: Path):
        self.port = free_port()
        self.data = root / "pgdata"
        self.socket_dir = root / "pgsocket"
        self.log = root / "postgresql.log"
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            postgres = pwd.getpwnam("postgres")
            for path in (root, self.socket_dir):
                os.chown(path, postgres.pw_uid, postgres.pw_gid)
        subprocess.run(
            _as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                          "--no-sync"]),
            check=True, capture_output=True,
        )  # fmt: skip
        self.start()
        subprocess.run(
            [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "firehose"],
            check=True,
        )

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/firehose"

    def _ctl(self, *args: str) -> None:
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w",
                          *args]),
            check=True, capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        self._ctl("start")

    def psql(self, sql: str) -> None:
        subprocess.run(
            [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "firehose",
             "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
            check=True,
        )  # fmt: skip

    def restart(self) -> None:
        self._ctl("-m", "fast", "restart")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "stop")


class Redis:
    def __init__(self, root: Path):
        self.port = free_port()
        self.process = Process(
            "redis",
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            env=dict(os.environ),
            log_dir=root,
        )
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process.start()
        wait_for(lambda: port_open(self.port), timeout=10, what="redis")

    def stop(self) -> None:
        self.process.stop()


class Emulator:
    """The Firehose-compatible endpoint (tests/support/firehose_emulator.py) and its control port."""

    def __init__(self, root: Path):
        self.port, self.control_port = free_port(), free_port()
        self.process = Process(
            "emulator",
            [sys.executable, "-m", "tests.support.firehose_emulator", "--port", str(self.port), "--control-port",
             str(self.control_port)],
            env=dict(os.environ),
            log_dir=root,
        ).start()  # fmt: skip
        wait_for(lambda: port_open(self.control_port), timeout=10, what="the Firehose emulator")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.control_port}{path}", data=data, method="POST" if data else "GET"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def behave(self, **behaviour: Any) -> None:
        self._call("/behaviour", behaviour)

    def records(self, stream: str) -> list[bytes]:
        return [base64.b64decode(item) for item in self._call(f"/records?stream={stream}")]

    def stats(self) -> dict:
        return self._call("/stats")


@dataclass
class Cluster:
    root: Path
    postgres: PostgreSQL
    redis: Redis
    emulator: Emulator
    env: dict[str, str]
    web_port: int
    web: Process | None = None
    beat: Process | None = None
    workers: list[Process] = field(default_factory=list)
    api_key: str = ""

    # --- processes --------------------------------------------------------------------------------------------

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=self.env, check=True, capture_output=True, text=True
        )
        return result.stdout.strip()

    def create_superuser(self, username: str, password: str) -> None:
        """An admin login (Django's createsuperuser, its password taken from the environment)."""
        subprocess.run(
            [sys.executable, "manage.py", "createsuperuser", "--no-input", "--username", username, "--email",
             f"{username}@example.com"],
            cwd=BASE_DIR, env={**self.env, "DJANGO_SUPERUSER_PASSWORD": password}, check=True, capture_output=True,
        )  # fmt: skip

    def start_web(self) -> None:
        self.web = Process(
            "web",
            [str(BIN / "gunicorn"), "project.wsgi:application", "-b", f"127.0.0.1:{self.web_port}", "-w", "2",
             "--timeout", "120"],
            env=self.env,
            log_dir=self.root,
        ).start()  # fmt: skip
        wait_for(lambda: port_open(self.web_port), timeout=30, what="gunicorn")

    def start_workers(self, count: int, concurrency: int = 1) -> None:
        for _ in range(count):
            number = len(self.workers) + 1
            self.workers.append(
                Process(
                    f"worker{number}",
                    [str(BIN / "celery"), "-A", "project", "worker", "-l", "info", "-n", f"w{number}@%h",
                     "--concurrency", str(concurrency), "--without-gossip", "--without-mingle"],
                    env=self.env,
                    log_dir=self.root,
                ).start()
            )  # fmt: skip

    def start_beat(self) -> None:
        self.beat = Process(
            "beat",
            [str(BIN / "celery"), "-A", "project", "beat", "-l", "info", "-s", str(self.root / "beat-schedule")],
            env=self.env,
            log_dir=self.root,
        ).start()  # fmt: skip

    def kill_random_worker(self, rng: random.Random) -> Process:
        worker = rng.choice(self.workers)
        worker.kill()
        worker.start()
        return worker

    def processes(self) -> list[Process]:
        return [process for process in (self.web, self.beat, *self.workers) if process is not None]

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def stop_processes(self) -> None:
        for process in [*self.workers, self.beat, self.web]:
            if process is not None:
                process.stop()
        self.workers.clear()
        self.beat = self.web = None

    def close(self) -> None:
        self.stop_processes()
        self.emulator.process.stop()
        self.redis.stop()
        try:
            self.postgres.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.postgres.data, ignore_errors=True)  # the logs stay in self.root for a post-mortem

    # --- the HTTP API -----------------------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, *, timeout: float = 60) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.web_port}/api/v1{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = response.read()
                return response.status, json.loads(payload) if payload else None
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                return error.code, json.loads(payload)
            except ValueError:
                return error.code, payload.decode(errors="replace")


def cluster_start(*, settings: dict[str, str]) -> Cluster:
    root = Path(tempfile.mkdtemp(prefix="firehose-faults-"))
    os.chmod(root, 0o755)
    postgres = PostgreSQL(root)
    redis_server = Redis(root)
    emulator = Emulator(root)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "PYTEST_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DEBUG="false",
        SECRET_KEY="fault-suite-secret-key",
        FIELD_ENCRYPTION_KEYS="Jz1H0yhqPaF1jeSSoUi6vN4ez8HdDDQHO4FrUt8ht4E=",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=postgres.url,
        CELERY_BROKER_URL=redis_server.url,
        CACHE_URL=redis_server.url,  # shared by every process, as in production (not the tests' own locmem cache)
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="INFO",
    )
    env.update(settings)
    cluster = Cluster(root, postgres, redis_server, emulator, env, free_port())
    cluster.manage("migrate", "--no-input")
    cluster.api_key = cluster.manage("create_api_key", "faults", "--scopes", "ingest,manage")
    return cluster
