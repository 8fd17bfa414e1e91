"""/healthz and JSON log lines, against the real database and Redis."""

import json
import logging
import subprocess
import sys

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from integrations.health import HEARTBEAT_KEY
from integrations.tasks import sweep_connections
from project.logs import JsonFormatter

from ..support.localhost import BASE_DIR, free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def broker() -> redis.Redis:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(HEARTBEAT_KEY)
    yield client
    client.delete(HEARTBEAT_KEY)


def test_healthz_is_ok_once_a_worker_ran_the_sweep(client, broker):
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["worker"] == {"ok": False, "last_heartbeat_seconds_ago": None}
    assert response.json()["checks"]["database"] == {"ok": True}

    sweep_connections()  # what beat has a worker do every SWEEP_INTERVAL_SECONDS
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["ok"] is True
    assert response.json()["checks"]["worker"]["last_heartbeat_seconds_ago"] < 5


def test_healthz_reports_an_old_heartbeat(client, broker):
    broker.set(HEARTBEAT_KEY, "1000")
    body = client.get("/healthz").json()
    assert body["ok"] is False and body["checks"]["worker"]["ok"] is False


def test_healthz_reports_redis_down(client):
    with override_settings(CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0"):
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"] == {"ok": False, "error": "ConnectionError"}


def test_json_log_lines_are_one_object_each():
    record = logging.LogRecord(
        "integrations.delivery", logging.WARNING, __file__, 1, "Connection %s faulted", (7,), None
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line) | {"time": "-"} == {
        "time": "-",
        "level": "WARNING",
        "logger": "integrations.delivery",
        "message": "Connection 7 faulted",
    }


def test_the_app_logs_json_when_told_to():
    code = "import django, logging; django.setup(); logging.getLogger('integrations').warning('hello %s', 'there')"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=BASE_DIR,
        env={"DJANGO_SETTINGS_MODULE": "project.test_settings", "LOG_FORMAT": "json", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    (line,) = result.stderr.strip().splitlines()
    assert json.loads(line)["message"] == "hello there"


def test_the_favicon_is_served_for_pages_without_html(client):
    """Browsers ask /favicon.ico on /metrics and /healthz: it leads to the admin's icon, served by the web process."""
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"] == "/static/integrations/favicon.svg"
    icon = client.get(response["Location"])
    assert icon.status_code == 200 and b"<svg" in b"".join(icon.streaming_content)
