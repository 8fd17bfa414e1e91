"""The Secret Access Key never leaves the database unencrypted: not in a table, an API answer, a log line or an alert.

The secret is never sent to AWS (requests are signed with it), so nothing on the wire can echo it; what an endpoint
can echo is the Authorization header, which holds the Access Key ID. The tests still make the emulated Firehose echo
both, as a misbehaving proxy would, and check that the transport's scrubbing keeps them out of everything we store,
answer and log. Logging is captured at DEBUG everywhere, botocore and urllib3 included, and SQL too.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator

import pytest
from botocore.exceptions import EndpointConnectionError
from django.db import connection as db
from moto.firehose.responses import FirehoseResponse
from rest_framework.test import APIClient

from integrations.models import Configuration, Connection, Delivery, DeliveryAttempt, SystemAlert
from integrations.transport.base import Credentials

from ..factories import ACCESS_KEY_ID, SECRET_ACCESS_KEY, apply, join, leave
from ..support import processes
from ..support.drains import drain
from ..support.emulator import EmulatedStream
from ..support.processes import VALID_KEY, start

pytestmark = pytest.mark.django_db

NEW_SECRET = "Zx9+NEWsecretAFTERpatch/Qq7TtYyUuIiOoPpAaSsDd"


def forms(secret: str) -> list[bytes]:
    """The secret as it would show if stored or printed carelessly: plain, base64 or hex."""
    raw = secret.encode()
    return [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw), raw.hex().encode()]


# --- where a secret could end up --------------------------------------------------------------------------------


def database_dump() -> list[tuple[str, str, bytes]]:
    """Every value of every column of every table of the test database, as (table, column, bytes)."""
    cells = []
    with db.cursor() as cursor:
        for table in db.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {db.ops.quote_name(table)}")
            columns = [column[0] for column in cursor.description]
            for row in cursor.fetchall():
                for column, value in zip(columns, row, strict=True):
                    if isinstance(value, memoryview):
                        value = value.tobytes()
                    cells.append((table, column, value if isinstance(value, bytes) else str(value).encode()))
    return cells


def cells_holding(secret: str) -> list[tuple[str, str]]:
    found = {(table, column) for table, column, value in database_dump() if any(f in value for f in forms(secret))}
    return sorted(found)


class CapturedLogs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, self.format(record)))  # the traceback is included

    def holding(self, secret: str) -> list[tuple[str, int, str]]:
        return [record for record in self.records if any(form.decode() in record[2] for form in forms(secret))]

    def names(self) -> set[str]:
        return {name.split(".")[0] for name, _, _ in self.records}


@pytest.fixture
def logs() -> Iterator[CapturedLogs]:
    """Every logger at DEBUG (botocore, urllib3 and SQL included), all captured, the previous levels restored."""
    handler = CapturedLogs()
    for name in ("botocore", "urllib3", "django.db.backends"):
        logging.getLogger(name)
    loggers = [logging.getLogger()] + [
        logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    saved = [(logger, logger.level, logger.disabled) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
        if logger is logging.root or not logger.propagate:
            logger.addHandler(handler)
    db.force_debug_cursor, debug_cursor = True, db.force_debug_cursor  # every SQL statement, with its parameters
    try:
        yield handler
    finally:
        db.force_debug_cursor = debug_cursor
        for logger, level, disabled in saved:
            logger.setLevel(level)
            logger.disabled = disabled
            if handler in logger.handlers:
                logger.removeHandler(handler)


class Api:
    """The API client, keeping every answer to search it afterwards."""

    def __init__(self, client: APIClient) -> None:
        self.client = client
        self.answers: list[tuple[str, str, bytes]] = []

    def __call__(self, method: str, path: str, data: dict | None = None, *, expect: int = 200) -> dict:
        response = getattr(self.client, method)(f"/api/v1/{path}", data, format="json")
        self.answers.append((method, path, response.content))
        assert response.status_code == expect, (method, path, response.content)
        return response.json() if response.content else {}

    def holding(self, secret: str) -> list[tuple[str, str]]:
        return [(method, path) for method, path, body in self.answers if any(form in body for form in forms(secret))]


@pytest.fixture
def calls(api: APIClient) -> Api:
    return Api(api)


def alert_texts() -> list[str]:
    """Everything written about a failure: alerts, attempts, connections and deliveries."""
    return [
        *SystemAlert.objects.values_list("last_message", flat=True),
        *DeliveryAttempt.objects.values_list("error_message", flat=True),
        *Connection.objects.values_list("last_error", flat=True),
        *Delivery.objects.values_list("last_error", flat=True),
    ]


# --- the whole life of a configuration --------------------------------------------------------------------------


@pytest.fixture(params=["in-process moto", "moto_server over HTTP"])
def firehose_endpoint(request, tmp_path, monkeypatch) -> Iterator[str]:
    """An emulated Firehose with the stream `audience-stream`: moto in this process (""), or a moto_server URL,
    so that urllib3 really sends the requests (and logs them)."""
    if request.param == "in-process moto":
        request.getfixturevalue("aws")
        EmulatedStream().create()
        yield ""
        return
    if not processes.available():
        pytest.skip("moto_server is not installed")
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_FIREHOSE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with processes.moto_server(tmp_path) as endpoint:
        processes.firehose_stream(endpoint, stream="audience-stream", bucket="audience-records")
        yield endpoint


def test_the_secret_never_shows_in_the_database_the_api_or_the_logs(firehose_endpoint, calls, logs):
    audience = calls("post", "audiences", {"internal_name": "low_engagement"}, expect=201)
    configuration = calls(
        "post",
        "configurations",
        {
            "name": "Travel",
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
            "endpoint_url": firehose_endpoint,
        },
        expect=201,
    )
    path = f"configurations/{configuration['id']}"
    calls("get", path)
    calls("patch", path, {"send_remove_on_identity_change": False})
    calls("patch", path, {"secret_access_key": NEW_SECRET})  # replaces the secret
    calls("patch", path, {"secret_access_key": NEW_SECRET + "x" * 300}, expect=400)  # refused without an echo
    calls("patch", path, {"secret_access_key": ""}, expect=400)
    calls("post", "configurations", {"name": "Bad", "access_key_id": "no", "secret_access_key": NEW_SECRET}, expect=400)

    link = {"audience": audience["id"], "configuration": configuration["id"]}
    good = calls("post", "connections", {**link, "stream_name": "audience-stream"}, expect=201)
    missing = calls("post", "connections", {**link, "stream_name": "no-such-stream"}, expect=201)
    for connection in (good, missing):
        calls("get", f"connections/{connection['id']}")
        calls("patch", f"connections/{connection['id']}", {"append_newline": False})
    assert calls("post", f"connections/{good['id']}/test")["ok"] is True
    assert calls("post", f"connections/{missing['id']}/test")["ok"] is False

    changes = [{"user_id": f"u{n}", "is_member": True, "identities": {"CustomerId": f"c{n}"}} for n in range(3)]
    calls("post", f"audiences/{audience['id']}/changes", {"changes": changes}, expect=202)
    for connection_id in (good["id"], missing["id"]):
        drain(Connection.objects.get(pk=connection_id))
    calls("post", f"connections/{good['id']}/pause")
    calls("post", f"connections/{good['id']}/resync", expect=202)
    calls("post", f"connections/{good['id']}/resume")
    drain(Connection.objects.get(pk=good["id"]))
    for connection in (good, missing):
        calls("get", f"connections/{connection['id']}")
    calls("get", "alerts")

    assert Connection.objects.get(pk=good["id"]).delivered_count == 6
    assert Connection.objects.get(pk=missing["id"]).status == Connection.Status.FAULTED
    assert Configuration.objects.get().secret_access_key == NEW_SECRET
    for secret in (SECRET_ACCESS_KEY, NEW_SECRET):
        assert cells_holding(secret) == []
        assert calls.holding(secret) == []
        assert logs.holding(secret) == []
    assert {"botocore", "django"} <= logs.names(), "the capture saw botocore's and Django's DEBUG lines"
    if firehose_endpoint:
        assert "urllib3" in logs.names(), "and urllib3's, with the requests sent over HTTP"


# --- an endpoint that echoes the request ------------------------------------------------------------------------

JSON = "application/x-amz-json-1.1"


def echo(response: FirehoseResponse) -> str:
    """What a misbehaving proxy echoes: the Authorization header it received, and the secret for good measure."""
    return f"request had Authorization: {response.headers.get('Authorization')}; secret={SECRET_ACCESS_KEY}"


def json_error(code: str, status: int) -> Callable:
    def answer(self: FirehoseResponse):
        return json.dumps({"__type": code, "message": echo(self)}), {"status": status, "Content-Type": JSON}

    return answer


def xml_error(self: FirehoseResponse):
    body = f"<ErrorResponse><Error><Code>InternalFailure</Code><Message>{echo(self)}</Message></Error></ErrorResponse>"
    return body, {"status": 500, "Content-Type": "text/xml"}


def connection_error(self: FirehoseResponse):
    raise EndpointConnectionError(endpoint_url=f"https://proxy.example/?{echo(self)}")


def failed_entries(self: FirehoseResponse):
    records = self._get_param("Records")
    entries = [{"ErrorCode": "InternalFailure", "ErrorMessage": echo(self)} for _ in records]
    body = {"FailedPutCount": len(records), "Encrypted": False, "RequestResponses": entries}
    return json.dumps(body), {"status": 200, "Content-Type": JSON}


ECHOES = {
    "throttling": {"*": json_error("ServiceUnavailableException", 503)},
    "access denied": {"*": json_error("AccessDeniedException", 400)},
    "an XML error document": {"*": xml_error},
    "a connection error": {"*": connection_error},
    "failed entries": {"put_record_batch": failed_entries, "put_record": failed_entries},
    "an error code": {"*": lambda self: (json.dumps({"__type": f"Denied.{SECRET_ACCESS_KEY}"}), {"status": 400})},
}


@pytest.mark.parametrize("behaviour", list(ECHOES))
def test_errors_that_echo_the_request_are_scrubbed_from_everything_stored_answered_and_logged(
    behaviour, connection, audience, calls, logs, monkeypatch
):
    apply(audience, join("u1", CustomerId="c1"), join("u2", CustomerId="c2"), leave("u1"))
    answers = ECHOES[behaviour]
    for operation in ("describe_delivery_stream", "put_record_batch", "put_record"):
        answer = answers.get(operation, answers.get("*"))
        if answer is not None:
            monkeypatch.setattr(FirehoseResponse, operation, answer)

    tested = calls("post", f"connections/{connection.pk}/test")
    drain(connection)
    calls("get", f"connections/{connection.pk}")
    calls("get", "alerts")

    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED
    assert Delivery.objects.filter(connection=connection, status=Delivery.Status.PENDING).count() == 3
    texts = alert_texts()
    for secret in (SECRET_ACCESS_KEY, ACCESS_KEY_ID):
        assert [text for text in texts if secret in text] == []
        assert calls.holding(secret) == []
    assert cells_holding(SECRET_ACCESS_KEY) == []
    assert cells_holding(ACCESS_KEY_ID) == [("integrations_configuration", "access_key_id")]
    if behaviour == "an XML error document":
        # Not an AWS JSON error: none of the body is kept, only its status (contract section 14).
        assert [text for text in texts if "request had Authorization" in text] == []
        assert any("unexpected HTTP 500 answer from the endpoint" in text for text in texts)
        assert tested["ok"] is False and "unexpected HTTP 500 answer from the endpoint" in tested["error"]
    else:
        assert any("***" in text for text in texts), "the echo did reach the stored errors, scrubbed"
    if behaviour not in ("failed entries", "an XML error document"):
        assert tested["ok"] is False and "***" in tested["error"]
    # Only botocore's own DEBUG lines (the raw response it received) can hold what the endpoint echoed:
    # LOGGING keeps botocore at WARNING whatever LOG_LEVEL says (test below), so they are never written.
    leaks = [(name, level) for name, level, _ in logs.holding(SECRET_ACCESS_KEY)]
    assert [(name, level) for name, level in leaks if not name.startswith("botocore") or level >= logging.WARNING] == []


def test_credentials_never_show_the_secret_in_their_repr():
    """A repr lands in tracebacks, DEBUG error pages and error e-mails (their frame variables), and in any log line
    that formats the object."""
    credentials = Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, "us-east-1")
    assert SECRET_ACCESS_KEY not in repr(credentials)


def test_botocore_at_debug_logs_the_signed_request_but_never_the_secret(connection, audience, logs):
    apply(audience, join("u1", CustomerId="c1"))
    drain(connection)
    botocore_lines = [text for name, _, text in logs.records if name.startswith("botocore")]
    assert any("Signature=" in text for text in botocore_lines)
    assert not any(SECRET_ACCESS_KEY in text for text in botocore_lines)


# --- start-up and logging configuration -------------------------------------------------------------------------


def test_it_starts_with_a_secret_key_and_encryption_keys():
    result = start()
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "variables, missing",
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY must be set"),
        ({"SECRET_KEY": "   "}, "SECRET_KEY must be set"),
        ({"FIELD_ENCRYPTION_KEYS": ""}, "FIELD_ENCRYPTION_KEYS must be set"),
        ({"FIELD_ENCRYPTION_KEYS": " , "}, "FIELD_ENCRYPTION_KEYS must be set"),
        ({"FIELD_ENCRYPTION_KEYS": "not-a-fernet-key"}, "key 1 is not a valid Fernet key"),
        ({"FIELD_ENCRYPTION_KEYS": f"{VALID_KEY},short"}, "key 2 is not a valid Fernet key"),
    ],
)
def test_with_debug_off_it_refuses_to_start_without_keys(variables, missing):
    result = start(**variables)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and missing in result.stderr


def test_with_debug_on_it_starts_without_keys_for_development():
    result = start(DEBUG="true", SECRET_KEY="", FIELD_ENCRYPTION_KEYS="")
    assert result.returncode == 0, result.stderr


def test_log_level_debug_leaves_botocore_and_urllib3_at_warning():
    code = (
        "import django, logging; django.setup(); "
        "print(*(logging.getLogger(name).getEffectiveLevel() for name in ('', 'botocore.parsers', 'urllib3')))"
    )
    result = start(code, LOG_LEVEL="DEBUG")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["10", "30", "30"]


def test_the_database_dump_sees_what_the_tests_write(audience):
    assert ("audiences_audience", "internal_name") in cells_holding("low_engagement")
