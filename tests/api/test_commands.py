"""The management command of the API that an operator runs: create_api_key."""

import hashlib
import json

import pytest
from django.core.management import CommandError

from api.models import ApiKey

from ..support.commands import run

# --- create_api_key ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_create_api_key_prints_a_key_once_and_stores_only_its_hash():
    key = run("create_api_key", "ci pipeline", scopes="ingest,manage").strip()

    api_key = ApiKey.objects.get()
    assert api_key.name == "ci pipeline"
    assert sorted(api_key.scopes) == ["ingest", "manage"]
    assert api_key.key_hash == hashlib.sha256(key.encode()).hexdigest()
    stored = json.dumps(list(ApiKey.objects.values().get().values()), default=str)
    assert key not in stored


@pytest.mark.django_db
def test_the_printed_key_opens_the_api(client):
    key = run("create_api_key", "ops", scopes="manage").strip()

    response = client.get("/api/v1/alerts", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert response.status_code == 200
    assert response.json() == []


@pytest.mark.django_db
def test_create_api_key_defaults_to_the_ingest_scope():
    run("create_api_key", "feeder")
    assert ApiKey.objects.get().scopes == ["ingest"]


@pytest.mark.django_db
@pytest.mark.parametrize("scopes", ["admin", "ingest,everything", ",", ""])
def test_create_api_key_refuses_unknown_scopes_and_stores_nothing(scopes):
    with pytest.raises(CommandError, match="Unknown scopes"):
        run("create_api_key", "bad", scopes=scopes)
    assert not ApiKey.objects.exists()


@pytest.mark.django_db
def test_create_api_key_refuses_a_blank_name():
    with pytest.raises(CommandError, match="blank"):
        run("create_api_key", "  ", scopes="ingest")
    assert not ApiKey.objects.exists()
