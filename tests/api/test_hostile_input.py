"""Hostile input: no request gets a 5xx, a rejected batch stores nothing, an oversized body is refused unread, and the
admin forms refuse what the API refuses (contract sections 3 and 7)."""

import io
import json
import sys
import time

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import wsgi

from audiences.identities import IDENTITY_KEYS
from audiences.models import Audience, MembershipChange, User
from audiences.services import audience_create, audience_delete
from console.forms import ConfigurationAdminForm, ConnectionAdminForm
from integrations.models import Configuration, Connection, Delivery
from integrations.outbox import OUTBOX
from project.wsgi import application

from ..factories import ACCESS_KEY_ID, SECRET_ACCESS_KEY

MB = 1024 * 1024
ACCEPTED_OR_REFUSED = {202, 400, 413, 415}
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def stored_rows() -> tuple[int, int, int]:
    return User.objects.count(), MembershipChange.objects.count(), Delivery.objects.count()


def errors(response) -> list[tuple[str, str]]:
    body = response.json()
    assert set(body) == {"errors"} and body["errors"], body
    return [(item["field"], item["message"]) for item in body["errors"]]


def fields(response) -> list[str]:
    return [field for field, _ in errors(response)]


def post_raw(api, path: str, body: bytes, content_type: str = "application/json"):
    return api.generic("POST", path, body, content_type=content_type)


@pytest.fixture
def changes_url(audience, connection) -> str:
    """The changes endpoint of an audience with an active connection, so that an accepted change stores deliveries."""
    return f"/api/v1/audiences/{audience.pk}/changes"


@pytest.fixture
def wsgi_app(db, aws, settings):
    """The WSGI application as a server runs it, inside the test's transaction (moto answers any AWS call)."""
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, wsgi.HOST]
    # As in Django's test client: a request must not close the connection that holds the test's transaction.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield application
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


# --- every operation of the OpenAPI document, fuzzed by schemathesis ----------------------------------------------

with override_settings(ALLOWED_HOSTS=[wsgi.HOST]):
    SCHEMA = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
# Every request carries a valid key (the tests send it): fuzz what comes after authentication.
SCHEMA.config.generation.update(with_security_parameters=False)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@schemathesis.check
def errors_in_the_contract_format(ctx, response, case) -> None:
    """Every refusal is JSON: `{"errors": [{"field": ..., "message": ...}]}` (contract section 7)."""
    if response.status_code >= 400:
        body = json.loads(response.content)
        assert set(body) == {"errors"} and body["errors"], body
        assert all(set(item) == {"field", "message"} for item in body["errors"]), body


def point_at_existing_objects(case, connection: Connection) -> None:
    """Ids of objects that exist, so that the request reaches the view's logic rather than a 404."""
    audience = Audience.objects.live().first() or audience_create(internal_name="fresh")
    ids = {"audience_id": audience.pk, "connection_id": connection.pk, "configuration_id": connection.configuration_id}
    for name in list(case.path_parameters or {}):
        if name in ids:
            case.path_parameters[name] = ids[name]
    if isinstance(case.body, dict):
        for name, value in (("audience", audience.pk), ("configuration", connection.configuration_id)):
            if name in case.body:
                case.body[name] = value


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda mode: mode.value)
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
@settings(FUZZ, max_examples=15)
@given(data=st.data())
def test_no_request_built_from_the_openapi_document_gets_a_5xx(wsgi_app, api_key, connection, operation, mode, data):
    case = data.draw(operation.as_strategy(generation_mode=mode), label="case")
    if data.draw(st.booleans(), label="existing objects"):
        point_at_existing_objects(case, connection)
    before = stored_rows()
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {api_key}"}, checks=[not_a_server_error, errors_in_the_contract_format]
    )
    if operation.path.endswith("/changes") and response.status_code != 202:
        assert stored_rows() == before


# --- arbitrary bodies for POST /api/v1/audiences/{id}/changes -----------------------------------------------------

# Any character, and often an awkward one: NUL, unpaired surrogates (sent as \ud800 escapes), BOM, line separator.
CHARACTERS = st.characters(codec=None) | st.sampled_from(["\x00", "\ud800", "\udfff", "\ufeff", "\u2028", '"', "\\"])
TEXT = st.lists(CHARACTERS, max_size=12).map("".join)
NUMBERS = (
    st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 10**400])
    | st.floats()  # NaN and Infinity too, which JSON does not have
)
BOOLEANS_AS_STRINGS = st.sampled_from(["true", "false", "True", "FALSE", "1", "0", "yes", ""])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT | BOOLEANS_AS_STRINGS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=10,
)
USER_IDS = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8) | TEXT | st.sampled_from(["", "x" * 257])
IDENTITY_VALUES = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8) | TEXT | JSON_VALUES
IDENTITIES = st.dictionaries(st.sampled_from(IDENTITY_KEYS) | TEXT, IDENTITY_VALUES, max_size=3) | JSON_VALUES
TIMESTAMPS = st.integers(min_value=0, max_value=4_102_444_800) | NUMBERS | BOOLEANS_AS_STRINGS | st.booleans()
CHANGES = st.fixed_dictionaries(
    {},
    optional={
        "user_id": USER_IDS | JSON_VALUES,
        "is_member": st.booleans() | BOOLEANS_AS_STRINGS | JSON_VALUES,
        "identities": IDENTITIES,
        "timestamp": TIMESTAMPS,
        "extra": JSON_VALUES,
    },
)
PAYLOADS = (
    st.fixed_dictionaries({"changes": st.lists(CHANGES, max_size=4)})
    | st.fixed_dictionaries({"changes": st.lists(CHANGES, max_size=4)}, optional={"": JSON_VALUES})
    | JSON_VALUES
)


def assert_answered_and_nothing_stored_unless_accepted(response, before: tuple[int, int, int]) -> None:
    assert response.status_code in ACCEPTED_OR_REFUSED, response.content
    if response.status_code == 202:
        assert set(response.json()) == {"accepted", "ignored"}
    else:
        assert all(isinstance(field, str) and message for field, message in errors(response))
        assert stored_rows() == before


@settings(FUZZ, max_examples=150)
@given(payload=PAYLOADS)
def test_any_json_is_accepted_or_refused_and_a_refused_batch_stores_nothing(api, changes_url, payload):
    before = stored_rows()
    response = post_raw(api, changes_url, json.dumps(payload, ensure_ascii=True).encode())
    assert_answered_and_nothing_stored_unless_accepted(response, before)


@settings(FUZZ, max_examples=80)
@given(
    text=st.lists(CHARACTERS, max_size=40).map("".join),
    where=st.sampled_from(["body", "user_id", "identity", "key", "change key"]),
    escaped=st.booleans(),
)
def test_any_text_is_accepted_or_refused(api, changes_url, text, where, escaped):
    """Text in a JSON string, escaped as json.dumps does it (unpaired surrogates as \\ud800) or as raw bytes, where
    an unpaired surrogate is not valid UTF-8."""
    if escaped:
        raw = quoted = json.dumps(text, ensure_ascii=True).encode()
    else:
        raw = text.encode("utf-8", "surrogatepass")
        quoted = b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    body = {
        "body": raw,
        "user_id": b'{"changes": [{"user_id": ' + quoted + b', "is_member": true}]}',
        "identity": b'{"changes": [{"user_id": "u", "is_member": true, "identities": {"Email": ' + quoted + b"}}]}",
        "key": b'{"changes": [{"user_id": "u", "is_member": true, "identities": {' + quoted + b': "x"}}]}',
        "change key": b'{"changes": [{"user_id": "u", "is_member": true, ' + quoted + b": 1}]}",
    }[where]
    before = stored_rows()
    assert_answered_and_nothing_stored_unless_accepted(post_raw(api, changes_url, body), before)


@settings(FUZZ, max_examples=60)
@given(
    noise=st.binary(max_size=64),
    where=st.sampled_from(["body", "user_id", "after"]),
    content_type=st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "application/json; charset=latin-1", "text/plain"]
    ),
)
def test_random_bytes_are_refused_or_accepted(api, changes_url, noise, where, content_type):
    body = {
        "body": noise,
        "user_id": b'{"changes": [{"user_id": "' + noise + b'", "is_member": true}]}',
        "after": b'{"changes": [{"user_id": "u", "is_member": true}]}' + noise,
    }[where]
    before = stored_rows()
    assert_answered_and_nothing_stored_unless_accepted(post_raw(api, changes_url, body, content_type), before)


# --- each bad change gets a 400 that names its field (tests/api/test_api.py has the common cases) ------------------

BAD_CHANGES = [
    ({"user_id": None, "is_member": True}, "changes[1].user_id"),
    ({"user_id": ["u1"], "is_member": True}, "changes[1].user_id"),
    ({"user_id": "\x00", "is_member": True}, "changes[1].user_id"),
    ({"user_id": "u1", "is_member": "false"}, "changes[1].is_member"),
    ({"user_id": "u1", "is_member": "True"}, "changes[1].is_member"),
    ({"user_id": "u1", "is_member": 0}, "changes[1].is_member"),
    ({"user_id": "u1", "is_member": None}, "changes[1].is_member"),
    ({"user_id": "u1", "is_member": True, "timestamp": 4_102_444_801}, "changes[1].timestamp"),
    ({"user_id": "u1", "is_member": True, "timestamp": 2**63}, "changes[1].timestamp"),
    ({"user_id": "u1", "is_member": True, "timestamp": -(2**63) - 1}, "changes[1].timestamp"),
    ({"user_id": "u1", "is_member": True, "timestamp": 1e20}, "changes[1].timestamp"),
    ({"user_id": "u1", "is_member": True, "timestamp": "true"}, "changes[1].timestamp"),
    ({"user_id": "u1", "is_member": True, "identities": {"Email": None}}, "changes[1].identities.Email"),
    ({"user_id": "u1", "is_member": True, "identities": {"Email": ["a@b.c"]}}, "changes[1].identities.Email"),
    ({"user_id": "u1", "is_member": True, "identities": {"Email": "true"}, "x": 1}, "changes[1].x"),
    ({"user_id": "u1", "is_member": True, "identities": {"Email": "\ud800"}}, "changes[1].identities.Email"),
    ({"user_id": "u1", "is_member": True, "identities": {"email": "a@b.c"}}, "changes[1].identities.email"),
    ({"user_id": "u1", "is_member": True, "identities": {"Em\x00ail": "a@b.c"}}, "changes[1].identities.Em\x00ail"),
    ({"user_id": "u1", "is_member": True, "identities": {"\ud800": "x"}}, "changes[1].identities.\\ud800"),
    ({"user_id": "u1", "is_member": True, "\udfff": 1}, "changes[1].\\udfff"),
]


@pytest.mark.parametrize("change, field", BAD_CHANGES)
def test_a_bad_change_is_refused_with_its_field_path(api, changes_url, change, field):
    payload = {"changes": [{"user_id": "good", "is_member": True}, change]}
    response = post_raw(api, changes_url, json.dumps(payload).encode())
    assert response.status_code == 400 and field in fields(response), response.content
    assert stored_rows() == (0, 0, 0)


@pytest.mark.parametrize(
    "body",
    [
        b'{"changes": [{"user_id": "\xc0\xaf", "is_member": true}]}',  # an overlong encoding of "/"
        b'{"changes": [{"user_id": "\xed\xa0\x80", "is_member": true}]}',  # a surrogate encoded as UTF-8
        b'{"changes": [{"user_id": "u1", "is_member": true, "identities": {"Email": "\xff"}}]}',
        b'\xef\xbb\xbf{"changes": [{"user_id": "u1", "is_member": true}]}',  # a byte order mark
        b'{"changes": [{"user_id": "u1", "is_member": true, "timestamp": NaN}]}',
        b'{"changes": [{"user_id": "u1", "is_member": true, "timestamp": 1' + b"0" * 5000 + b"}]}",
        b'{"changes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["overlong", "utf8-surrogate", "invalid-byte", "bom", "nan", "5000-digits", "deeply-nested"],
)
def test_a_body_that_is_not_json_in_utf8_is_refused_as_a_whole(api, changes_url, body):
    response = post_raw(api, changes_url, body)
    assert response.status_code == 400 and fields(response) == ["body"], response.content
    assert stored_rows() == (0, 0, 0)


def test_json_in_another_charset_is_refused_with_415(api, changes_url):
    body = '{"changes": [{"user_id": "u1", "is_member": true}]}'.encode("utf-16")
    response = post_raw(api, changes_url, body, "application/json; charset=utf-16")
    assert response.status_code == 415 and fields(response) == ["body"]
    assert stored_rows() == (0, 0, 0)


def test_the_limits_themselves_are_accepted(api, changes_url, settings):
    latest = int(time.time()) + settings.CHANGE_MAX_FUTURE_SECONDS - 5  # a few seconds' margin for the request
    payload = {
        "changes": [
            {"user_id": "x" * 256, "is_member": True, "identities": {"Email": "e" * 1024}, "timestamp": 0},
            {"user_id": "y", "is_member": True, "timestamp": latest},
        ]
    }
    response = post_raw(api, changes_url, json.dumps(payload).encode())
    assert response.status_code == 202 and response.json() == {"accepted": 2, "ignored": 0}


@pytest.mark.parametrize("ahead", [400, 86_400, 4_102_444_800 - 1_800_000_000])
def test_a_timestamp_too_far_ahead_of_the_server_clock_is_refused_with_its_path(api, changes_url, ahead):
    payload = {
        "changes": [
            {"user_id": "u1", "is_member": True, "timestamp": int(time.time())},
            {"user_id": "u2", "is_member": True, "timestamp": int(time.time()) + ahead},
        ]
    }
    response = post_raw(api, changes_url, json.dumps(payload).encode())
    assert response.status_code == 400 and fields(response) == ["changes[1].timestamp"]
    assert "seconds ahead of the server's clock" in response.json()["errors"][0]["message"]
    assert stored_rows() == (0, 0, 0)


def test_10001_changes_are_refused_whatever_they_hold(api, changes_url):
    payload = {"changes": [{"user_id": "\x00", "is_member": "yes"}] * 10_001}
    response = post_raw(api, changes_url, json.dumps(payload).encode())
    assert response.status_code == 400 and fields(response) == ["changes"]
    assert stored_rows() == (0, 0, 0)


def test_many_bad_changes_get_at_most_100_errors(api, changes_url):
    payload = {"changes": [{"user_id": "", "is_member": True}] * 5_000}
    response = post_raw(api, changes_url, json.dumps(payload).encode())
    assert response.status_code == 400 and len(fields(response)) == 100
    assert stored_rows() == (0, 0, 0)


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"identities": {"\ud800": "x"}}, "identities.\\ud800"),
        ({"identities": {"Email": "\ud800"}}, "identities.Email"),
        ({"identities": {"Email": "true"}, "\x00": 1}, "\x00"),
        ({"identities": None}, "identities"),
    ],
)
def test_put_user_refuses_hostile_identities_with_their_field_path(api, payload, field):
    response = api.generic("PUT", "/api/v1/users/u1", json.dumps(payload).encode(), content_type="application/json")
    assert response.status_code == 400 and field in fields(response), response.content
    assert not User.objects.exists()


def test_alerts_refuse_a_connection_id_in_other_digits(api):
    for value in ("%C2%B2", "%D9%A1", "1.0", "-1", "1" * 19):
        response = api.get(f"/api/v1/alerts?connection={value}")
        assert response.status_code == 400 and fields(response) == ["connection"], value


@pytest.mark.parametrize("path", ["/api/v1/nothing-here", "/api/v1/connections/1%0A/pause", "/api/v1/%0A"])
def test_unknown_api_paths_get_a_404_in_the_error_format_whatever_the_method(api_key, path):
    client = APIClient(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {api_key}")
    for method in ("get", "post", "put", "patch", "delete"):
        response = getattr(client, method)(path)
        assert response.status_code == 404 and fields(response) == [""], (method, response.content)


def test_an_echoed_value_is_cut_short_in_the_error(api, audience):
    response = api.post("/api/v1/connections", {"region": "r" * 100_000}, format="json")
    assert response.status_code == 400
    assert all(len(field) + len(message) < 2_100 for field, message in errors(response))


# --- bodies over the limit are refused before they are read ----------------------------------------------------


class Unreadable(io.RawIOBase):
    """A request body that fails the test if anything reads it."""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the request body was read")

    readinto = readline = read


class Endless(io.RawIOBase):
    """A request body of spaces that never ends, counting what was read of it."""

    def __init__(self) -> None:
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = 64 * 1024 if size is None or size < 0 else min(size, 64 * 1024)
        self.bytes_read += size
        return b" " * size

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


def call_wsgi(app, path: str, api_key: str, body: io.RawIOBase, **environ: str) -> tuple[int, bytes]:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": wsgi.HOST,
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": wsgi.HOST,
        "HTTP_AUTHORIZATION": f"Bearer {api_key}",
        "CONTENT_TYPE": "application/json",
        "wsgi.input": body,
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        **environ,
    }
    statuses = []
    result = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    try:
        content = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return int(statuses[0].split()[0]), content


def test_a_20_mb_body_is_refused_with_413_without_being_read(wsgi_app, api_key, changes_url):
    status, content = call_wsgi(wsgi_app, changes_url, api_key, Unreadable(), CONTENT_LENGTH=str(20 * MB))
    assert status == 413
    assert [error["field"] for error in json.loads(content)["errors"]] == ["body"]
    assert stored_rows() == (0, 0, 0)


def test_a_chunked_body_is_refused_without_being_read(wsgi_app, api_key, changes_url):
    status, content = call_wsgi(wsgi_app, changes_url, api_key, Unreadable(), HTTP_TRANSFER_ENCODING="chunked")
    assert status == 400
    assert [error["field"] for error in json.loads(content)["errors"]] == ["body"]
    assert b"Content-Length" in content
    assert stored_rows() == (0, 0, 0)


def test_a_body_longer_than_its_content_length_is_read_only_up_to_it(wsgi_app, api_key, changes_url):
    body = Endless()
    status, _ = call_wsgi(wsgi_app, changes_url, api_key, body, CONTENT_LENGTH="1000")
    assert status == 400 and body.bytes_read <= 1000


def test_the_parser_reads_no_more_than_the_limit_plus_one_byte(settings):
    from rest_framework.exceptions import APIException

    from api.validation import JSONParser

    settings.API_MAX_BODY_BYTES = MB
    body = Endless()
    with pytest.raises(APIException) as raised:
        JSONParser().parse(body, "application/json", {"encoding": "utf-8"})
    assert raised.value.status_code == 413 and body.bytes_read == MB + 1


# --- the admin forms and the API refuse the same settings --------------------------------------------------------

GOOD_CONFIGURATION = {
    "name": "Travel",
    "access_key_id": ACCESS_KEY_ID,
    "secret_access_key": SECRET_ACCESS_KEY,
    "send_remove_on_identity_change": True,
    "endpoint_url": "",
}
# Cases tests/api/test_api.py sends to the API already.
BAD_CONFIGURATIONS_IN_TEST_API = [
    ({"access_key_id": "short"}, "access_key_id"),
    ({"access_key_id": "akiaiosfodnn7example"}, "access_key_id"),
    ({"secret_access_key": ""}, "secret_access_key"),
    ({"endpoint_url": "ftp://example.com"}, "endpoint_url"),
    ({"endpoint_url": "not a url"}, "endpoint_url"),
    ({"name": ""}, "name"),
]
BAD_CONFIGURATIONS = [
    ({"access_key_id": "AKIA IOSFODNN7EXAMPLE"}, "access_key_id"),
    ({"access_key_id": "AKIAIOSFODNN7EXAMPLÉ"}, "access_key_id"),
    ({"access_key_id": "A" * 129}, "access_key_id"),
    ({"access_key_id": "AKIAIOSFODNN7\x00EXAMPLE"}, "access_key_id"),
    ({"endpoint_url": "ftps://example.com"}, "endpoint_url"),
    ({"endpoint_url": "javascript:alert(1)"}, "endpoint_url"),
    ({"endpoint_url": "http://"}, "endpoint_url"),
    ({"endpoint_url": "http://example.com/" + "x" * 200}, "endpoint_url"),
    ({"name": "a\x00b"}, "name"),
]
GOOD_ENDPOINTS = ["http://localhost:4566", "https://vpce-0a1b.firehose.us-east-1.vpce.amazonaws.com"]


def configuration_form(**overrides) -> ConfigurationAdminForm:
    return ConfigurationAdminForm(data={**GOOD_CONFIGURATION, **overrides})


@pytest.mark.django_db
@pytest.mark.parametrize("overrides, field", BAD_CONFIGURATIONS_IN_TEST_API + BAD_CONFIGURATIONS)
def test_the_configuration_form_refuses_bad_settings_with_their_field(overrides, field):
    form = configuration_form(**overrides)
    assert not form.is_valid() and field in form.errors, form.errors


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint_url", ["", *GOOD_ENDPOINTS])
def test_the_configuration_form_takes_http_and_https_endpoints(endpoint_url):
    assert configuration_form(endpoint_url=endpoint_url).is_valid()


@pytest.mark.parametrize("overrides, field", BAD_CONFIGURATIONS)
def test_the_api_refuses_the_same_configurations(api, overrides, field):
    response = api.post("/api/v1/configurations", {**GOOD_CONFIGURATION, **overrides}, format="json")
    assert response.status_code == 400 and field in fields(response), response.content
    assert not Configuration.objects.exists()


@pytest.mark.parametrize("endpoint_url", GOOD_ENDPOINTS)
def test_the_api_takes_http_and_https_endpoints(api, endpoint_url):
    response = api.post("/api/v1/configurations", {**GOOD_CONFIGURATION, "endpoint_url": endpoint_url}, format="json")
    assert response.status_code == 201 and response.json()["endpoint_url"] == endpoint_url


BAD_CONNECTIONS_IN_TEST_API = [
    ({"stream_name": "has space"}, "stream_name"),
    ({"stream_name": "x" * 65}, "stream_name"),
    ({"stream_name": ""}, "stream_name"),
    ({"region": "mars-1"}, "region"),
    ({"identities_to_exclude": ["Nope"]}, "identities_to_exclude"),
]
BAD_CONNECTIONS = [
    ({"stream_name": "bad/slash"}, "stream_name"),
    ({"stream_name": "strëam"}, "stream_name"),
    ({"stream_name": "a\x00b"}, "stream_name"),
    ({"stream_name": "arn:aws:firehose:us-east-1:123456789012:deliverystream/s"}, "stream_name"),
    ({"region": "US-EAST-1"}, "region"),
    ({"region": "us-east-1 "}, "region"),
    ({"region": ""}, "region"),
    ({"identities_to_exclude": ["email"]}, "identities_to_exclude"),
]


def connection_data(audience: Audience, configuration: Configuration, **overrides) -> dict:
    return {"audience": audience.pk, "configuration": configuration.pk, "stream_name": "ok-stream", **overrides}


@pytest.mark.parametrize("overrides, field", BAD_CONNECTIONS_IN_TEST_API + BAD_CONNECTIONS)
def test_the_connection_form_refuses_bad_settings_with_their_field(audience, configuration, overrides, field):
    form = ConnectionAdminForm(data=connection_data(audience, configuration, **overrides))
    assert not form.is_valid() and field in form.errors, form.errors


def test_the_connection_form_refuses_a_deleted_audience(audience, configuration):
    audience_delete(audience=audience, outbox=OUTBOX)
    form = ConnectionAdminForm(data=connection_data(audience, configuration))
    assert not form.is_valid() and "audience" in form.errors


def test_the_connection_form_takes_good_settings(audience, configuration):
    form = ConnectionAdminForm(data=connection_data(audience, configuration, region="eu-west-1"))
    assert form.is_valid(), form.errors


@pytest.mark.parametrize("overrides, field", BAD_CONNECTIONS)
def test_the_api_refuses_the_same_connections(api, audience, configuration, overrides, field):
    response = api.post("/api/v1/connections", connection_data(audience, configuration, **overrides), format="json")
    assert response.status_code == 400 and any(name.startswith(field) for name in fields(response)), response.content
    assert not Connection.objects.exists()


@pytest.mark.parametrize("overrides, field", BAD_CONNECTIONS)
def test_the_api_refuses_the_same_changes_to_a_connection(api, connection, overrides, field):
    response = api.patch(f"/api/v1/connections/{connection.pk}", overrides, format="json")
    assert response.status_code == 400 and any(name.startswith(field) for name in fields(response)), response.content
    connection.refresh_from_db()
    assert connection.stream_name != overrides.get("stream_name") and connection.region == "us-east-1"
