"""Brute-force protection of the admin login (django-axes), through the real login form: a username, or an address,
is locked out after repeated failures, even with the right password; and the HTTPS settings come from the
environment."""

import pytest
from django.contrib.auth.models import User as StaffUser
from django.test import Client

from ..support.admin_pages import url
from ..support.processes import start

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def operator() -> StaffUser:
    return StaffUser.objects.create_user(username="fogg", password=PASSWORD, is_staff=True, is_superuser=True)


def log_in(username: str, password: str, address: str = "203.0.113.7"):
    client = Client(REMOTE_ADDR=address)
    response = client.post(url("login"), {"username": username, "password": password, "next": url("index")})
    return client, response


def logged_in(client: Client) -> bool:
    return client.get(url("index")).status_code == 200


def test_a_username_is_locked_out_after_repeated_failures_even_with_the_right_password(operator, settings):
    for attempt in range(settings.AXES_FAILURE_LIMIT - 1):
        client, response = log_in("fogg", "wrong", address=f"198.51.100.{attempt}")
        assert response.status_code == 200 and "Please enter the correct username and password" in response.text
    client, response = log_in("fogg", "wrong", address="198.51.100.99")
    assert response.status_code == 429 and 'id="lockout"' in response.text

    client, response = log_in("fogg", PASSWORD, address="192.0.2.1")  # another address: the username is locked
    assert response.status_code == 429 and "locked out for 15 minutes" in " ".join(response.text.split())
    assert not logged_in(client)


def test_an_address_is_locked_out_after_failures_for_any_usernames(operator, settings):
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        log_in(f"guess-{attempt}", "wrong", address="203.0.113.50")
    client, response = log_in("fogg", PASSWORD, address="203.0.113.50")
    assert response.status_code == 429 and not logged_in(client)
    client, response = log_in("fogg", PASSWORD, address="203.0.113.51")
    assert response.status_code == 302 and logged_in(client)


def test_a_successful_login_clears_the_failures_before_it(operator, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in("fogg", "wrong")
    client, response = log_in("fogg", PASSWORD)
    assert response.status_code == 302 and logged_in(client)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in("fogg", "wrong")
    client, response = log_in("fogg", PASSWORD)
    assert response.status_code == 302 and logged_in(client)


def test_the_api_keys_are_not_counted_as_admin_logins(api, audience, operator, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT + 2):
        assert api.get(f"/api/v1/audiences/{audience.pk}").status_code == 200
    client, response = log_in("fogg", PASSWORD)
    assert response.status_code == 302


def test_the_https_settings_come_from_the_environment():
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, "
        "s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_PROXY_SSL_HEADER, s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME)"
    )
    result = start(
        code,
        SESSION_COOKIE_SECURE="true",
        CSRF_COOKIE_SECURE="true",
        SECURE_SSL_REDIRECT="true",
        SECURE_HSTS_SECONDS="31536000",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="true",
        SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO,https",
        ADMIN_LOGIN_FAILURE_LIMIT="3",
        ADMIN_LOGIN_LOCKOUT_MINUTES="30",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "True", "True", "True", "31536000", "True", "('HTTP_X_FORWARDED_PROTO',", "'https')", "3", "0:30:00"
    ]  # fmt: skip
    refused = start(SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto")
    assert refused.returncode != 0 and "SECURE_PROXY_SSL_HEADER must be a header and a value" in refused.stderr
