"""The HTTP API of contract section 7: shapes, scopes, and validation that stores nothing."""

import json
from urllib.parse import quote

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from api.models import ApiKey
from api.services import api_key_create
from audiences.models import Audience, Membership, MembershipChange, User
from integrations.alerts import alert_raise, alerts_resolve_on_delivery
from integrations.models import Configuration, Connection, Delivery, SystemAlert

from ..factories import ACCESS_KEY_ID, SECRET_ACCESS_KEY
from ..support.drains import drain

pytestmark = pytest.mark.django_db


def errors(response) -> list[tuple[str, str]]:
    body = response.json()
    assert set(body) == {"errors"}
    return [(item["field"], item["message"]) for item in body["errors"]]


def fields(response) -> list[str]:
    return [field for field, _ in errors(response)]


def client_with(scopes: list[str]) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(name='k', scopes=scopes)[1]}")
    return client


def nothing_stored() -> bool:
    return not (User.objects.exists() or MembershipChange.objects.exists() or Delivery.objects.exists())


# --- authentication and scopes ----------------------------------------------------------------------------------


def test_it_refuses_requests_without_a_key():
    response = APIClient().post("/api/v1/audiences", {"internal_name": "x"}, format="json")
    assert response.status_code == 401 and fields(response) == [""]
    assert not Audience.objects.exists()


def test_it_refuses_unknown_and_revoked_keys():
    api_key, key = api_key_create(name="old", scopes=["manage"])
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())
    for credentials in (f"Bearer {key}", "Bearer fak_nope", "Basic abc"):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=credentials)
        assert client.get("/api/v1/alerts").status_code == 401


def test_keys_are_stored_hashed():
    api_key, key = api_key_create(name="k", scopes=["ingest"])
    stored = ApiKey.objects.filter(pk=api_key.pk).values_list("key_hash", "prefix").get()
    assert key not in stored[0] and len(stored[0]) == 64 and key.startswith(stored[1])


def test_scopes_split_ingest_from_manage(audience):
    ingest, manage = client_with(["ingest"]), client_with(["manage"])
    change = {"changes": [{"user_id": "u1", "is_member": True}]}
    assert ingest.post("/api/v1/audiences", {"internal_name": "x"}, format="json").status_code == 403
    assert ingest.get(f"/api/v1/audiences/{audience.pk}").status_code == 403
    assert manage.post(f"/api/v1/audiences/{audience.pk}/changes", change, format="json").status_code == 403
    assert manage.put("/api/v1/users/u1", {"identities": {}}, format="json").status_code == 403
    assert ingest.post(f"/api/v1/audiences/{audience.pk}/changes", change, format="json").status_code == 202
    assert manage.get(f"/api/v1/audiences/{audience.pk}").status_code == 200


# --- audiences ----------------------------------------------------------------------------------------------------


def test_an_audience_is_created_renamed_filled_and_deleted_and_its_id_is_never_reused(api):
    response = api.post("/api/v1/audiences", {"internal_name": "churn_risk"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body == {"id": body["id"], "internal_name": "churn_risk", "external_name": "", "member_count": 0}

    response = api.patch(f"/api/v1/audiences/{body['id']}", {"external_name": "Churn Risk"}, format="json")
    assert response.status_code == 200 and response.json()["external_name"] == "Churn Risk"
    api.post(
        f"/api/v1/audiences/{body['id']}/changes",
        {"changes": [{"user_id": "u1", "is_member": True}, {"user_id": "u2", "is_member": True}]},
        format="json",
    )
    assert api.get(f"/api/v1/audiences/{body['id']}").json()["member_count"] == 2

    assert api.delete(f"/api/v1/audiences/{body['id']}").status_code == 204
    assert api.get(f"/api/v1/audiences/{body['id']}").status_code == 404
    response = api.post(
        f"/api/v1/audiences/{body['id']}/changes", {"changes": [{"user_id": "u3", "is_member": True}]}, format="json"
    )
    assert response.status_code == 404
    next_id = api.post("/api/v1/audiences", {"internal_name": "next"}, format="json").json()["id"]
    assert next_id > body["id"], "ids are never reused"


@pytest.mark.parametrize(
    "payload, field",
    [
        ({}, "internal_name"),
        ({"internal_name": ""}, "internal_name"),
        ({"internal_name": "   "}, "internal_name"),
        ({"internal_name": 5}, "internal_name"),
        ({"internal_name": "x" * 256}, "internal_name"),
        ({"internal_name": "a\x00b"}, "internal_name"),
        ({"internal_name": "ok", "external_name": ["x"]}, "external_name"),
        ({"internal_name": "ok", "colour": "red"}, "colour"),
    ],
)
def test_an_invalid_audience_is_refused_with_its_field_and_nothing_is_stored(api, payload, field):
    response = api.post("/api/v1/audiences", payload, format="json")
    assert response.status_code == 400 and field in fields(response)
    assert not Audience.objects.exists()


# --- changes ------------------------------------------------------------------------------------------------------


def test_changes_are_accepted_and_counted(api, audience):
    payload = {
        "changes": [
            {"user_id": "u1", "is_member": True, "identities": {"CustomerId": "c1"}, "timestamp": 1700000000},
            {"user_id": "u1", "is_member": True, "identities": {"CustomerId": "c1"}},
            {"user_id": "u2", "is_member": False},
            {"user_id": "u1", "is_member": False, "timestamp": 1600000000},
        ]
    }
    response = api.post(f"/api/v1/audiences/{audience.pk}/changes", payload, format="json")
    assert response.status_code == 202 and response.json() == {"accepted": 1, "ignored": 3}


BAD_CHANGES = [
    ({"changes": [{"user_id": "u1", "is_member": True, "identities": {"Foo": "x"}}]}, "changes[0].identities.Foo"),
    ({"changes": [{"user_id": "u1", "is_member": True, "identities": {"Email": 5}}]}, "changes[0].identities.Email"),
    ({"changes": [{"user_id": "u1", "is_member": True, "identities": {"Email": ""}}]}, "changes[0].identities.Email"),
    (
        {"changes": [{"user_id": "u1", "is_member": True, "identities": {"Email": "x" * 1025}}]},
        "changes[0].identities.Email",
    ),
    ({"changes": [{"user_id": "u1", "is_member": True, "identities": ["Email"]}]}, "changes[0].identities"),
    ({"changes": [{"user_id": "u1", "is_member": "true"}]}, "changes[0].is_member"),
    ({"changes": [{"user_id": "u1", "is_member": 1}]}, "changes[0].is_member"),
    ({"changes": [{"user_id": "u1"}]}, "changes[0].is_member"),
    ({"changes": [{"is_member": True}]}, "changes[0].user_id"),
    ({"changes": [{"user_id": "", "is_member": True}]}, "changes[0].user_id"),
    ({"changes": [{"user_id": "x" * 257, "is_member": True}]}, "changes[0].user_id"),
    ({"changes": [{"user_id": 42, "is_member": True}]}, "changes[0].user_id"),
    ({"changes": [{"user_id": "a\x00b", "is_member": True}]}, "changes[0].user_id"),
    (
        {"changes": [{"user_id": "u1", "is_member": True, "identities": {"Email": "a\x00"}}]},
        "changes[0].identities.Email",
    ),
    ({"changes": [{"user_id": "u1", "is_member": True, "timestamp": -1}]}, "changes[0].timestamp"),
    ({"changes": [{"user_id": "u1", "is_member": True, "timestamp": 10**20}]}, "changes[0].timestamp"),
    ({"changes": [{"user_id": "u1", "is_member": True, "timestamp": "1700000000"}]}, "changes[0].timestamp"),
    ({"changes": [{"user_id": "u1", "is_member": True, "timestamp": 1.5}]}, "changes[0].timestamp"),
    ({"changes": [{"user_id": "u1", "is_member": True, "timestamp": True}]}, "changes[0].timestamp"),
    ({"changes": [{"user_id": "u1", "is_member": True, "extra": 1}]}, "changes[0].extra"),
    ({"changes": ["u1"]}, "changes[0]"),
    ({"changes": []}, "changes"),
    ({"changes": {"user_id": "u1"}}, "changes"),
    ({}, "changes"),
    ([], "body"),
]


@pytest.mark.parametrize("payload, field", BAD_CHANGES)
def test_a_bad_change_rejects_the_whole_batch_with_its_field_path(api, audience, payload, field):
    if isinstance(payload, dict) and isinstance(payload.get("changes"), list) and payload["changes"]:
        payload = {"changes": [{"user_id": "good", "is_member": True}, *payload["changes"]]}
        field = field.replace("changes[0]", "changes[1]")
    response = api.post(f"/api/v1/audiences/{audience.pk}/changes", payload, format="json")
    assert response.status_code == 400, response.content
    assert field in fields(response)
    assert nothing_stored()


def test_it_rejects_10001_changes(api, audience):
    payload = {"changes": [{"user_id": f"u{n}", "is_member": True} for n in range(10_001)]}
    response = api.post(f"/api/v1/audiences/{audience.pk}/changes", payload, format="json")
    assert response.status_code == 400 and fields(response) == ["changes"]
    assert nothing_stored()


def test_it_accepts_10000_changes(api, audience):
    payload = {"changes": [{"user_id": f"u{n}", "is_member": True} for n in range(10_000)]}
    response = api.post(f"/api/v1/audiences/{audience.pk}/changes", payload, format="json")
    assert response.status_code == 202 and response.json() == {"accepted": 10_000, "ignored": 0}
    assert Membership.objects.filter(audience=audience, is_member=True).count() == 10_000


def test_it_refuses_a_body_that_is_not_json(api, audience):
    url = f"/api/v1/audiences/{audience.pk}/changes"
    assert api.post(url, b"changes=1", content_type="application/x-www-form-urlencoded").status_code == 415
    response = api.post(url, b'{"changes": [', content_type="application/json")
    assert response.status_code == 400 and fields(response) == ["body"]
    response = api.post(
        url, b'{"changes": [{"user_id": "\xff\xfe", "is_member": true}]}', content_type="application/json"
    )
    assert response.status_code == 400 and fields(response) == ["body"]
    response = api.post(
        url, b'{"changes": [{"user_id": "\\ud800", "is_member": true}]}', content_type="application/json"
    )
    assert response.status_code == 400 and fields(response) == ["changes[0].user_id"]
    assert nothing_stored()


def test_it_refuses_a_20_mb_body_with_413(api, audience):
    body = b'{"changes": [' + b" " * (20 * 1024 * 1024) + b"]}"
    response = api.post(f"/api/v1/audiences/{audience.pk}/changes", body, content_type="application/json")
    assert response.status_code == 413 and fields(response) == ["body"]
    assert nothing_stored()


def test_unknown_paths_and_audiences_answer_404_in_the_error_format(api):
    assert fields(api.get("/api/v1/nothing-here")) == [""]
    response = api.post(
        "/api/v1/audiences/999/changes", {"changes": [{"user_id": "u", "is_member": True}]}, format="json"
    )
    assert response.status_code == 404 and nothing_stored()


# --- users --------------------------------------------------------------------------------------------------------


def test_put_user_replaces_identities(api):
    response = api.put("/api/v1/users/p.fogg", {"identities": {"CustomerId": "c1", "Email": "e@x.com"}}, format="json")
    assert response.status_code == 200
    assert response.json()["user_id"] == "p.fogg"
    assert response.json()["identities"] == {"CustomerId": "c1", "Email": "e@x.com"}
    response = api.put("/api/v1/users/p.fogg", {"identities": {"Email": "e@x.com"}}, format="json")
    assert response.json()["identities"] == {"Email": "e@x.com"}


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"identities": {"Nope": "x"}}, "identities.Nope"),
        ({"identities": {"Email": True}}, "identities.Email"),
        ({"identities": "x"}, "identities"),
        ({}, "identities"),
        ({"identities": {}, "extra": 1}, "extra"),
    ],
)
def test_an_invalid_put_user_body_is_refused_with_its_field_and_nothing_is_stored(api, payload, field):
    response = api.put("/api/v1/users/u1", payload, format="json")
    assert response.status_code == 400 and field in fields(response)
    assert not User.objects.exists()


def test_put_user_merges_attributes_and_keeps_what_it_is_not_given(api):
    first = api.put(
        "/api/v1/users/p.fogg", {"identities": {"CustomerId": "c1"}, "attributes": {"plan": "pro"}}, format="json"
    )
    assert first.status_code == 200
    assert first.json()["attributes"] == {"plan": "pro"}
    second = api.put(
        "/api/v1/users/p.fogg",
        {"attributes": {"score": 3.5, "tags": ["a"], "since": "2026-11-30T12:00:00Z"}},
        format="json",
    )
    assert second.json()["identities"] == {"CustomerId": "c1"}, "identities are kept when not given"
    assert second.json()["attributes"] == {"plan": "pro", "score": 3.5, "tags": ["a"], "since": "2026-11-30T12:00:00Z"}
    third = api.put(
        "/api/v1/users/p.fogg", {"identities": {"Email": "e@x.com"}, "attributes": {"plan": None}}, format="json"
    )
    assert third.json()["identities"] == {"Email": "e@x.com"}
    assert third.json()["attributes"] == {"score": 3.5, "tags": ["a"], "since": "2026-11-30T12:00:00Z"}
    user = User.objects.get(external_id="p.fogg")
    assert user.attribute_times == {"since": 1796040000.0}


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"attributes": {"9plan": "x"}}, "attributes.9plan"),
        ({"attributes": {"plan": {"nested": 1}}}, "attributes.plan"),
        ({"attributes": {"tags": ["a", 2]}}, "attributes.tags"),
        ({"attributes": "x"}, "attributes"),
        ({"attributes": {f"a{n}": n for n in range(201)}}, "attributes"),
    ],
)
def test_bad_attributes_are_refused_with_their_path_and_nothing_is_stored(api, payload, field):
    response = api.put("/api/v1/users/u1", payload, format="json")
    assert response.status_code == 400 and field in fields(response), response.content
    assert not User.objects.exists()


@pytest.mark.parametrize(
    "user_id",
    ["tenant/42", "a/b/c", "trailing/", "with space", "50%", "q?x=1#y", "line\nbreak", "é/ü", "..", "/leading"],
)
def test_put_user_takes_every_id_the_changes_api_takes(api, audience, user_id):
    joined = api.post(
        f"/api/v1/audiences/{audience.pk}/changes",
        {"changes": [{"user_id": user_id, "is_member": True, "identities": {"CustomerId": "old"}}]},
        format="json",
    )
    assert joined.status_code == 202
    response = api.put(f"/api/v1/users/{quote(user_id, safe='')}", {"identities": {"CustomerId": "new"}}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["user_id"] == user_id and response.json()["identities"] == {"CustomerId": "new"}
    assert User.objects.get(external_id=user_id).identities == {"CustomerId": "new"}


def test_put_user_rejects_an_overlong_user_id(api):
    response = api.put(f"/api/v1/users/{'x' * 257}", {"identities": {}}, format="json")
    assert response.status_code == 400 and fields(response) == ["user_id"]


# --- configurations -----------------------------------------------------------------------------------------------


def configuration_payload(**overrides) -> dict:
    return {"name": "Travel", "access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET_ACCESS_KEY, **overrides}


def test_configurations_never_return_the_secret(api):
    response = api.post("/api/v1/configurations", configuration_payload(), format="json")
    assert response.status_code == 201
    body = response.json()
    assert SECRET_ACCESS_KEY not in response.content.decode()
    assert "secret_access_key" not in body and body["send_remove_on_identity_change"] is True
    configuration_id = body["id"]
    assert SECRET_ACCESS_KEY not in api.get(f"/api/v1/configurations/{configuration_id}").content.decode()
    stored = (
        Configuration.objects.filter(pk=configuration_id).values_list("encrypted_secret_access_key", flat=True).get()
    )
    assert SECRET_ACCESS_KEY not in stored

    response = api.patch(f"/api/v1/configurations/{configuration_id}", {"name": "Renamed"}, format="json")
    assert response.status_code == 200 and SECRET_ACCESS_KEY not in response.content.decode()
    assert Configuration.objects.get(pk=configuration_id).secret_access_key == SECRET_ACCESS_KEY
    response = api.patch(
        f"/api/v1/configurations/{configuration_id}", {"secret_access_key": "n3w/Secret"}, format="json"
    )
    assert response.status_code == 200 and "n3w/Secret" not in response.content.decode()
    assert Configuration.objects.get(pk=configuration_id).secret_access_key == "n3w/Secret"


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"access_key_id": "short"}, "access_key_id"),
        ({"access_key_id": "akiaiosfodnn7example"}, "access_key_id"),
        ({"secret_access_key": ""}, "secret_access_key"),
        ({"endpoint_url": "ftp://example.com"}, "endpoint_url"),
        ({"endpoint_url": "not a url"}, "endpoint_url"),
        ({"send_remove_on_identity_change": "false"}, "send_remove_on_identity_change"),
        ({"name": ""}, "name"),
    ],
)
def test_an_invalid_configuration_is_refused_with_its_field_and_nothing_is_stored(api, overrides, field):
    response = api.post("/api/v1/configurations", configuration_payload(**overrides), format="json")
    assert response.status_code == 400 and field in fields(response)
    assert not Configuration.objects.exists()


# --- connections --------------------------------------------------------------------------------------------------


def test_a_connection_is_created_operated_and_changed_through_the_api(api, audience, configuration, stream):
    api.post(
        f"/api/v1/audiences/{audience.pk}/changes",
        {"changes": [{"user_id": "u1", "is_member": True, "identities": {"Email": "e@x.com"}}]},
        format="json",
    )
    response = api.post(
        "/api/v1/connections",
        {"audience": audience.pk, "configuration": configuration.pk, "stream_name": stream.name},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "active" and body["region"] == "us-east-1" and body["append_newline"] is True
    assert body["resync"]["running"] is True
    connection = Connection.objects.get(pk=body["id"])
    drain(connection)

    body = api.get(f"/api/v1/connections/{connection.pk}").json()
    assert {key: body[key] for key in ("status", "backlog", "delivered", "failed", "last_error")} == {
        "status": "active",
        "backlog": 0,
        "delivered": 1,
        "failed": 0,
        "last_error": "",
    }
    assert body["last_delivered_at"]

    test = api.post(f"/api/v1/connections/{connection.pk}/test").json()
    assert test["ok"] is True and test["stream_status"] == "ACTIVE" and test["stream_arn"].endswith(stream.name)
    assert api.post(f"/api/v1/connections/{connection.pk}/pause").json()["status"] == "paused"
    assert api.post(f"/api/v1/connections/{connection.pk}/resume").json()["status"] == "active"
    response = api.post(f"/api/v1/connections/{connection.pk}/resync")
    assert response.status_code == 202 and response.json()["resync"]["running"] is True
    response = api.patch(f"/api/v1/connections/{connection.pk}", {"forward_email_addresses": False}, format="json")
    assert response.status_code == 200 and response.json()["forward_email_addresses"] is False
    drain(connection)
    assert [record["UserIdentities"] for record in stream.records()] == [{"Email": "e@x.com"}, {}]


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"stream_name": "has space"}, "stream_name"),
        ({"stream_name": "x" * 65}, "stream_name"),
        ({"stream_name": ""}, "stream_name"),
        ({"region": "mars-1"}, "region"),
        ({"identities_to_exclude": ["Nope"]}, "identities_to_exclude[0]"),
        ({"identities_to_exclude": "Email"}, "identities_to_exclude"),
        ({"send_anonymous_users": "true"}, "send_anonymous_users"),
        ({"audience": 999}, "audience"),
        ({"configuration": "1"}, "configuration"),
        ({"status": "faulted"}, "status"),
    ],
)
def test_an_invalid_connection_is_refused_with_its_field_and_nothing_is_stored(
    api, audience, configuration, overrides, field
):
    payload = {"audience": audience.pk, "configuration": configuration.pk, "stream_name": "ok-stream", **overrides}
    response = api.post("/api/v1/connections", payload, format="json")
    assert response.status_code == 400 and field in fields(response), response.content
    assert not Connection.objects.exists()


# --- alerts and schema --------------------------------------------------------------------------------------------


def test_alerts_are_listed_and_filtered(api, connection):
    alert_raise(
        connection=connection, type=SystemAlert.Type.STREAM_NOT_FOUND, message="The delivery stream does not exist."
    )
    alert_raise(
        connection=connection, type=SystemAlert.Type.STREAM_NOT_FOUND, message="The delivery stream does not exist."
    )
    SystemAlert.objects.create(
        connection=connection,
        type=SystemAlert.Type.ACCESS_DENIED,
        first_seen=timezone.now(),
        last_seen=timezone.now(),
        acknowledged=True,
    )
    body = api.get(f"/api/v1/alerts?connection={connection.pk}&open=true").json()
    assert [(alert["type"], alert["count"], alert["open"]) for alert in body] == [("Stream Not Found", 2, True)]
    assert len(api.get("/api/v1/alerts").json()) == 2
    alerts_resolve_on_delivery(connection_id=connection.pk)  # the connection delivered again
    resolved = api.get(f"/api/v1/alerts?connection={connection.pk}&open=false").json()
    assert sorted((alert["type"], alert["open"], alert["resolved_at"] is not None) for alert in resolved) == [
        ("Access Denied", False, False),
        ("Stream Not Found", False, True),
    ]
    assert fields(api.get("/api/v1/alerts?open=maybe")) == ["open"]
    assert fields(api.get("/api/v1/alerts?connection=x")) == ["connection"]


def test_the_openapi_document_and_docs_page_are_served():
    client = APIClient()
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    document = json.loads(schema.content)
    assert document["openapi"].startswith("3.")
    assert "/api/v1/audiences/{audience_id}/changes" in document["paths"]
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


@override_settings(API_MAX_BODY_BYTES=100)
def test_the_body_limit_is_a_setting(api, audience):
    payload = {"changes": [{"user_id": f"u{n}", "is_member": True} for n in range(10)]}
    assert api.post(f"/api/v1/audiences/{audience.pk}/changes", payload, format="json").status_code == 413


# --- users in bulk ------------------------------------------------------------------------------------------------


def test_post_users_creates_and_updates_users_in_order_and_counts_what_changed_nothing(
    api, audience, connection, stream
):
    joined = api.post(
        f"/api/v1/audiences/{audience.pk}/changes",
        {"changes": [{"user_id": "member", "is_member": True, "identities": {"CustomerId": "old"}}]},
        format="json",
    )
    assert joined.status_code == 202
    users = [
        {"user_id": "new", "attributes": {"plan": "pro"}},
        {"user_id": "member", "identities": {"CustomerId": "new"}, "attributes": {"score": 1}},
        {"user_id": "new", "attributes": {"plan": None, "seen": "2026-11-30T12:00:00Z"}},
        {"user_id": "member", "attributes": {"score": 1}},  # changes nothing
        {"user_id": "new"},  # changes nothing
    ]

    response = api.post("/api/v1/users", {"users": users}, format="json")

    assert response.status_code == 202, response.content
    assert response.json() == {"accepted": 3, "ignored": 2}
    new, member = User.objects.get(external_id="new"), User.objects.get(external_id="member")
    assert new.attributes == {"seen": "2026-11-30T12:00:00Z"} and new.attribute_times == {"seen": 1796040000.0}
    assert member.identities == {"CustomerId": "new"} and member.attributes == {"score": 1}
    drain(connection)
    assert [record["UserIdentities"] for record in stream.records()] == [
        {"CustomerId": "old"},  # the join
        {"CustomerId": "old"},  # IsMember false with the identities the member had
        {"CustomerId": "new"},
    ]


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"users": [{"user_id": "a"}, {"attributes": {"plan": "x"}}]}, "users[1].user_id"),
        ({"users": [{"user_id": "a", "attributes": {"plan": {}}}]}, "users[0].attributes.plan"),
        ({"users": [{"user_id": "a", "identities": {"Nope": "x"}}]}, "users[0].identities.Nope"),
        ({"users": [{"user_id": "a", "extra": 1}]}, "users[0].extra"),
        ({"users": [{"user_id": "a", "attributes": {f"k{n}": n for n in range(201)}}]}, "users[0].attributes"),
        ({"users": []}, "users"),
        ({"users": [{"user_id": f"u{n}"} for n in range(10_001)]}, "users"),
        ({"people": []}, "people"),
    ],
)
def test_a_bad_batch_of_users_is_refused_with_its_field_and_nothing_is_stored(api, payload, field):
    response = api.post("/api/v1/users", payload, format="json")
    assert response.status_code == 400 and field in fields(response), response.content
    assert not User.objects.exists()
