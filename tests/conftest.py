from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Group
from django.db import connection as db_connection
from django.utils import timezone
from moto import mock_aws
from rest_framework.test import APIClient

from api.services import api_key_create
from audiences.models import Audience
from audiences.services import ChangeIn, audience_create, membership_changes_apply
from integrations.delivery import DrainReport, connection_drain
from integrations.layout import delivery_shard_count, delivery_shards_change
from integrations.models import Configuration, Connection
from integrations.services import configuration_create, connection_create

from .support.emulator import EmulatedStream

ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_FIREHOSE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


@pytest.fixture
def stream(aws: None) -> EmulatedStream:
    return EmulatedStream().create()


@pytest.fixture
def configuration(db: None) -> Configuration:
    return configuration_create(name="Travel", access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY)


@pytest.fixture
def audience(db: None) -> Audience:
    return audience_create(internal_name="low_engagement", external_name="LowEngagement")


@pytest.fixture
def make_connection(audience: Audience, configuration: Configuration, stream: EmulatedStream):
    def make(**settings) -> Connection:
        settings.setdefault("audience", audience)
        settings.setdefault("configuration", configuration)
        settings.setdefault("stream_name", stream.name)
        return connection_create(**settings)

    return make


@pytest.fixture
def connection(make_connection) -> Connection:
    return make_connection()


def apply(audience: Audience, *changes: ChangeIn):
    return membership_changes_apply(audience=audience, changes=list(changes))


def join(user_id: str, timestamp: int | None = None, **identities: str) -> ChangeIn:
    return ChangeIn(user_id=user_id, is_member=True, identities=identities or None, timestamp=timestamp)


def leave(user_id: str, timestamp: int | None = None, **identities: str) -> ChangeIn:
    return ChangeIn(user_id=user_id, is_member=False, identities=identities or None, timestamp=timestamp)


def members(audience: Audience, count: int, prefix: str = "user", **identities: str) -> None:
    """`count` users join, each with its user id as CustomerId (plus `identities`)."""
    changes = [
        ChangeIn(user_id=f"{prefix}-{n}", is_member=True, identities={"CustomerId": f"{prefix}-{n}", **identities})
        for n in range(count)
    ]
    membership_changes_apply(audience=audience, changes=changes)


def customer_ids(records: list[dict]) -> list[str]:
    return [record["UserIdentities"]["CustomerId"] for record in records]


def drain(connection: Connection, *, max_wait: float = 30.0) -> DrainReport:
    """Drain every shard of a connection as the workers would, waiting out scheduled retries, until nothing is due
    or it stops."""
    total = DrainReport()
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        report = DrainReport()
        for shard in reversed(range(delivery_shard_count())):  # shard 0 last: an audience deletion waits there
            shard_report = connection_drain(connection.pk, shard, time_budget=max_wait)
            report.batches += shard_report.batches
            report.more_work |= shard_report.more_work
            total.delivered += shard_report.delivered
            total.skipped += shard_report.skipped
            total.failed += shard_report.failed
        total.batches += report.batches
        connection.refresh_from_db()
        if connection.status != Connection.Status.ACTIVE:
            break
        if connection.next_attempt_at and connection.next_attempt_at > timezone.now():
            time.sleep(max(0.0, (connection.next_attempt_at - timezone.now()).total_seconds()) + 0.01)
            continue
        if not report.more_work and report.batches == 0:
            break
    return total


@pytest.fixture
def delivery_shards(settings, db: None):
    """Split the backlogs into this many shards, as `manage.py migrate` does when DELIVERY_SHARDS changes."""

    def use(count: int) -> None:
        settings.DELIVERY_SHARDS = count
        delivery_shards_change(count=count)

    return use


@pytest.fixture
def api_key(db: None) -> str:
    return api_key_create(name="upstream", scopes=["ingest", "manage"])[1]


@pytest.fixture
def api(api_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
    return client


@pytest.fixture
def role_groups(db: None) -> None:
    """The Operators and Viewers groups come from a migration; a transactional test elsewhere may have flushed them,
    so make them again then."""
    if Group.objects.filter(name__in=["Operators", "Viewers"]).count() < 2:
        from django.apps import apps

        migration = importlib.import_module("integrations.migrations.0003_roles_groups")
        migration.create_groups(apps, SimpleNamespace(connection=db_connection))
