"""The fixtures every test directory shares. The builders they use are in tests/factories.py, the emulators, the
processes and the page helpers in tests/support/."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Group
from django.db import connection as db_connection
from moto import mock_aws
from rest_framework.test import APIClient

from api.services import api_key_create
from audiences.models import Audience
from integrations.layout import delivery_shards_change
from integrations.models import Configuration, Connection

from .factories import AudienceFactory, ConfigurationFactory, ConnectionFactory
from .support.emulator import EmulatedStream


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
    return ConfigurationFactory()


@pytest.fixture
def audience(db: None) -> Audience:
    return AudienceFactory()


@pytest.fixture
def make_connection(audience: Audience, configuration: Configuration, stream: EmulatedStream):
    def make(**settings) -> Connection:
        settings.setdefault("audience", audience)
        settings.setdefault("configuration", configuration)
        settings.setdefault("stream_name", stream.name)
        return ConnectionFactory(**settings)

    return make


@pytest.fixture
def connection(make_connection) -> Connection:
    return make_connection()


@pytest.fixture
def quiet_connection(audience: Audience, configuration: Configuration) -> Connection:
    """A connection for the tests that send nothing: no AWS needed."""
    return ConnectionFactory(audience=audience, configuration=configuration)


@pytest.fixture
def postgresql_only() -> None:
    """Skips a test of row locks on SQLite; a module asks for it with `pytest.mark.usefixtures("postgresql_only")`."""
    if db_connection.vendor != "postgresql":
        pytest.skip("row locks: SQLite runs one writing transaction at a time")


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
