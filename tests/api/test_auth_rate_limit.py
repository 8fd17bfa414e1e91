"""Failed API key authentication is rate limited per client address; the limit fails open when the cache is down."""

import logging
import os
import secrets
import subprocess
import sys

import pytest
import redis
from django.conf import settings
from django.core.cache import cache
from django.test import override_settings
from rest_framework.test import APIClient

from api import authentication
from audiences.models import User

from ..support.localhost import free_port

pytestmark = pytest.mark.django_db

LIMIT = 10  # the default: API_AUTH_FAILURE_LIMIT
REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(autouse=True)
def fresh_counters(monkeypatch):
    """Each test starts with no failures counted and the cache believed up."""
    authentication.cache_pause.clear()
    cache.clear()
    yield
    cache.clear()


def client(key: str | None = None, address: str = "203.0.113.7", **meta: str) -> APIClient:
    api = APIClient(REMOTE_ADDR=address, **meta)
    if key is not None:
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return api


def fail(times: int, address: str = "203.0.113.7", **meta: str) -> list[int]:
    return [client("fak_wrong", address, **meta).get("/api/v1/alerts").status_code for _ in range(times)]


def test_the_limit_blocks_the_address_with_429_and_retry_after_even_for_a_valid_key(api_key):
    assert fail(LIMIT) == [401] * LIMIT

    response = client(api_key).get("/api/v1/alerts")

    assert response.status_code == 429
    assert response.json() == {
        "errors": [
            {
                "field": "",
                "message": f"Too many failed API key attempts from this address. "
                f"Expected available in {response['Retry-After']} seconds.",
            }
        ]
    }
    assert 1 <= int(response["Retry-After"]) <= settings.API_AUTH_FAILURE_WINDOW_SECONDS


def test_a_blocked_address_stores_nothing(api_key, audience):
    fail(LIMIT)
    changes = {"changes": [{"user_id": "u1", "is_member": True}]}
    response = client(api_key).post(f"/api/v1/audiences/{audience.pk}/changes", changes, format="json")
    assert response.status_code == 429
    assert not User.objects.exists()


def test_up_to_the_limit_a_valid_key_still_works(api_key):
    fail(LIMIT - 1)
    assert client(api_key).get("/api/v1/alerts").status_code == 200


def test_successes_in_between_do_not_reset_the_count(api_key):
    for _ in range(LIMIT):
        fail(1)
        client(api_key).get("/api/v1/alerts")
    assert client(api_key).get("/api/v1/alerts").status_code == 429


@pytest.mark.parametrize(
    "credentials", ["Bearer fak_wrong", "Basic dXNlcjpwYXNz", "Bearer", "Bearer two words", "Bearer \u00e9t\u00e9"]
)
def test_every_kind_of_failed_attempt_counts(credentials, api_key):
    attempt = APIClient(REMOTE_ADDR="203.0.113.7", HTTP_AUTHORIZATION=credentials)
    assert [attempt.get("/api/v1/alerts").status_code for _ in range(LIMIT)] == [401] * LIMIT
    assert client(api_key).get("/api/v1/alerts").status_code == 429


def test_requests_without_a_key_are_not_counted(api_key):
    for _ in range(LIMIT * 2):
        assert APIClient(REMOTE_ADDR="203.0.113.7").get("/api/v1/alerts").status_code == 401
    assert client(api_key).get("/api/v1/alerts").status_code == 200


def test_other_addresses_are_not_blocked(api_key):
    fail(LIMIT, "203.0.113.7")
    assert client(api_key, "203.0.113.8").get("/api/v1/alerts").status_code == 200


def test_ipv6_addresses_count_by_their_64_network(api_key):
    for n in range(LIMIT):
        fail(1, f"2001:db8:1:2::{n + 1:x}")
    assert client(api_key, "2001:db8:1:2:ffff::1").get("/api/v1/alerts").status_code == 429
    assert client(api_key, "2001:db8:1:3::1").get("/api/v1/alerts").status_code == 200


def test_x_forwarded_for_is_not_trusted_by_default(api_key):
    for n in range(LIMIT):
        fail(1, HTTP_X_FORWARDED_FOR=f"198.51.100.{n}")  # a new made-up address each time
    response = client(api_key, HTTP_X_FORWARDED_FOR="198.51.100.200").get("/api/v1/alerts")
    assert response.status_code == 429


@override_settings(API_TRUSTED_PROXY_COUNT=1)
def test_behind_a_trusted_proxy_the_address_it_saw_counts(api_key):
    proxy = "10.0.0.2"
    for n in range(LIMIT):  # the client prepends made-up addresses; the proxy appends the one it saw
        fail(1, proxy, HTTP_X_FORWARDED_FOR=f"198.51.100.{n}, 203.0.113.7")
    blocked = client(api_key, proxy, HTTP_X_FORWARDED_FOR="198.51.100.99, 203.0.113.7")
    other = client(api_key, proxy, HTTP_X_FORWARDED_FOR="203.0.113.8")
    assert blocked.get("/api/v1/alerts").status_code == 429
    assert other.get("/api/v1/alerts").status_code == 200


@override_settings(API_AUTH_FAILURE_WINDOW_SECONDS=1)
def test_the_block_ends_when_the_window_has_passed(api_key):
    import time

    fail(LIMIT)
    response = client(api_key).get("/api/v1/alerts")
    assert response.status_code == 429 and response["Retry-After"] == "1"
    time.sleep(1.1)
    assert client(api_key).get("/api/v1/alerts").status_code == 200


@override_settings(API_AUTH_FAILURE_LIMIT=0)
def test_a_limit_of_zero_turns_it_off(api_key):
    assert fail(LIMIT * 2) == [401] * LIMIT * 2
    assert client(api_key).get("/api/v1/alerts").status_code == 200


# --- the cache ------------------------------------------------------------------------------------------------------


def redis_cache(location: str, prefix: str) -> dict:
    return {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": location,
            "KEY_PREFIX": prefix,
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }


def test_it_fails_open_when_the_cache_is_down(api_key, caplog):
    with override_settings(CACHES=redis_cache(f"redis://127.0.0.1:{free_port()}/0", "down")):
        with caplog.at_level(logging.WARNING, logger="api.authentication"):
            assert fail(LIMIT * 2) == [401] * LIMIT * 2
            assert client(api_key).get("/api/v1/alerts").status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.name == "api.authentication"]
    assert warnings == [
        "The cache is unavailable (ConnectionError): failed API authentication is not rate limited for the next 30 s."
    ], "one warning, then the cache is left alone for a while"


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", ""), **env}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=settings.BASE_DIR, capture_output=True, text=True)


def test_the_settings_default_to_the_brokers_redis_with_short_timeouts():
    result = run_python(
        "import django; django.setup(); from django.conf import settings; print(settings.CACHES['default'])",
        DJANGO_SETTINGS_MODULE="project.settings",
        DEBUG="true",
        CELERY_BROKER_URL="redis://broker.internal:6380/2",
        CACHE_URL="",  # blank counts as unset
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://broker.internal:6380/2",
            "KEY_PREFIX": "firehose",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    )


@pytest.fixture
def shared_redis() -> str:
    """A key prefix of its own on the test Redis, removed afterwards."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    prefix = f"test-{secrets.token_hex(4)}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def test_web_processes_share_the_counters_through_redis(api_key, shared_redis):
    """Failures counted by this process block the address in another process, as with several gunicorn workers."""
    with override_settings(CACHES=redis_cache(REDIS_URL, shared_redis)):
        assert fail(LIMIT) == [401] * LIMIT
        result = run_python(
            "import django; django.setup(); from django.conf import settings; "
            f"settings.CACHES['default']['KEY_PREFIX'] = {shared_redis!r}; "
            "from api.authentication import auth_blocked_for; print(auth_blocked_for('203.0.113.7'))",
            DJANGO_SETTINGS_MODULE="project.test_settings",
            CACHE_URL=REDIS_URL,
        )
    assert result.returncode == 0, result.stderr
    assert 1 <= int(result.stdout) <= settings.API_AUTH_FAILURE_WINDOW_SECONDS
