"""Health: the database answers, Redis answers, and a worker ran the sweep recently (its heartbeat)."""

from __future__ import annotations

import time

import redis
from django.conf import settings
from django.db import connection

HEARTBEAT_KEY = "firehose:worker-heartbeat"


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=1, socket_connect_timeout=1)


def worker_heartbeat_record() -> None:
    """Called by the sweep, which beat schedules every SWEEP_INTERVAL_SECONDS and a worker runs."""
    try:
        _redis().set(HEARTBEAT_KEY, str(time.time()), ex=3600)
    except redis.RedisError:
        pass  # health reports Redis as down; the sweep itself goes on


def heartbeat_max_age() -> float:
    return max(15.0, settings.SWEEP_INTERVAL_SECONDS * 5)


def health_check() -> dict:
    checks: dict[str, dict] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = {"ok": True}
    except Exception as error:  # noqa: BLE001 - any failure means unhealthy, and is reported
        checks["database"] = {"ok": False, "error": type(error).__name__}
    try:
        client = _redis()
        client.ping()
        beat = client.get(HEARTBEAT_KEY)
        checks["redis"] = {"ok": True}
    except redis.RedisError as error:
        checks["redis"] = {"ok": False, "error": type(error).__name__}
        beat = None
    age = time.time() - float(beat) if beat else None
    checks["worker"] = {
        "ok": age is not None and age <= heartbeat_max_age(),
        "last_heartbeat_seconds_ago": None if age is None else round(age, 1),
    }
    return {"ok": all(check["ok"] for check in checks.values()), "checks": checks}
