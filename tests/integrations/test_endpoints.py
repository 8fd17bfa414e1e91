"""Endpoints and credentials that cannot be used, and endpoints that must not be reached (contract section 14):
cloud metadata and link-local addresses are refused as written and as resolved, answers that are not AWS errors
never show their body, Test connection answers within seconds, and an endpoint or a secret that cannot be used
faults the connection with an alert that says what to fix."""

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.fernet import Fernet

from audiences.models import Membership
from integrations.connections import connection_create, connection_test
from integrations.delivery import connections_sweep
from integrations.endpoints import endpoint_url_error
from integrations.models import Configuration, Connection, Delivery, DeliveryAttempt, DeliveryFailure, SystemAlert

from ..factories import ACCESS_KEY_ID, SECRET_ACCESS_KEY, apply, join
from ..support import firehose_emulator
from ..support.drains import drain
from ..support.localhost import free_port

SECRET_PAGE = b"<html><body>internal admin: db_password=hunter2</body></html>"

REFUSED = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.0.1:4566",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/",
    "http://0.0.0.0:4566",
    "http://[::]:4566",
    "http://[::ffff:169.254.169.254]/",
    "http://2852039166/",
    "http://0xA9FEA9FE/",
    "http://[fe80::1]:4566",
]
ALLOWED = [
    "http://127.0.0.1:4566",
    "http://localhost:4566",
    "http://10.0.0.5",
    "http://192.168.1.20:8080",
    "https://vpce-0123-abcd.firehose.us-east-1.vpce.amazonaws.com",
]


class Answers(BaseHTTPRequestHandler):
    """Whatever is at the endpoint: an internal page (404 with a body) or nothing at all (a request that hangs)."""

    hits: list[str] = []
    hang = False

    def log_message(self, format, *args) -> None:
        pass

    def do_POST(self) -> None:
        type(self).hits.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if type(self).hang:
            time.sleep(30)
            return
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(SECRET_PAGE)))
        self.end_headers()
        self.wfile.write(SECRET_PAGE)


@pytest.fixture
def internal_server() -> Iterator[tuple[str, type[Answers]]]:
    handler = type("InternalPage", (Answers,), {"hits": [], "hang": False})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def emulator() -> Iterator[int]:
    port = free_port()
    server = firehose_emulator.DataServer("127.0.0.1", port)
    with firehose_emulator.STATE.lock:
        firehose_emulator.STATE.records.clear()
        firehose_emulator.STATE.behaviour = {}
    yield port
    server.close()


def connection_at(endpoint_url: str, audience, **configuration) -> Connection:
    configuration = Configuration.objects.create(
        name=f"at {endpoint_url}", access_key_id=ACCESS_KEY_ID, endpoint_url=endpoint_url, **configuration
    )
    configuration.secret_access_key = SECRET_ACCESS_KEY
    configuration.save()
    return connection_create(audience=audience, configuration=configuration, stream_name="audience-stream")


@pytest.mark.parametrize("url", REFUSED)
def test_a_metadata_or_link_local_endpoint_is_refused(api, url):
    body = {"name": "Metadata", "access_key_id": ACCESS_KEY_ID, "secret_access_key": "x", "endpoint_url": url}
    response = api.post("/api/v1/configurations", body, format="json")
    assert response.status_code == 400, response.content
    assert [error["field"] for error in response.json()["errors"]] == ["endpoint_url"]
    assert not Configuration.objects.exists()


@pytest.mark.parametrize("url", ALLOWED)
def test_loopback_private_and_vpc_endpoints_are_allowed(url):
    assert endpoint_url_error(url) is None


def test_a_host_that_resolves_to_the_metadata_service_is_refused_when_sending(
    audience, internal_server, monkeypatch, api
):
    url, answers = internal_server
    port = url.rsplit(":", 1)[1]
    real_getaddrinfo = socket.getaddrinfo

    def rebinding(host, *args, **kwargs):  # the name pointed at the emulator when saved, at the metadata service now
        return real_getaddrinfo("169.254.169.254" if host == "rebind.example" else host, *args, **kwargs)

    connection = connection_at(f"http://rebind.example:{port}", audience)
    apply(audience, join("u1", CustomerId="c1"))
    monkeypatch.setattr(socket, "getaddrinfo", rebinding)

    tested = api.post(f"/api/v1/connections/{connection.pk}/test").json()
    drain(connection)

    assert tested["ok"] is False and "resolves to 169.254.169.254" in tested["error"]
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED
    alert = SystemAlert.objects.get(connection=connection, type=SystemAlert.Type.ENDPOINT_NOT_USABLE)
    assert (
        "resolves to 169.254.169.254" in alert.last_message and "Correct it in the configuration" in alert.last_message
    )
    assert answers.hits == [], "no request left for the metadata address"


def test_a_host_name_that_resolves_to_loopback_reaches_a_local_emulator(audience, emulator):
    connection = connection_at(f"http://localhost:{emulator}", audience)
    apply(audience, join("u1", CustomerId="c1"))
    drain(connection)
    with firehose_emulator.STATE.lock:
        records = [json.loads(record) for record in firehose_emulator.STATE.records["audience-stream"]]
    assert [record["UserIdentities"] for record in records] == [{"CustomerId": "c1"}]


def test_an_answer_that_is_not_an_aws_error_never_shows_its_body(audience, internal_server, api, caplog):
    url, answers = internal_server
    connection = connection_at(url, audience)
    apply(audience, join("u1", CustomerId="c1"))

    tested = api.post(f"/api/v1/connections/{connection.pk}/test").json()
    drain(connection)
    shown = api.get(f"/api/v1/connections/{connection.pk}").json()
    alerts = api.get("/api/v1/alerts").json()

    assert answers.hits, "the endpoint was asked"
    assert tested["ok"] is False and tested["error"].endswith("unexpected HTTP 404 answer from the endpoint")
    stored = [
        tested["error"],
        shown["last_error"],
        json.dumps(alerts),
        *DeliveryAttempt.objects.values_list("error_message", flat=True),
        *Delivery.objects.values_list("last_error", flat=True),
        *DeliveryFailure.objects.values_list("error", flat=True),
        *(record.getMessage() for record in caplog.records),
    ]
    assert [text for text in stored if "db_password" in text or "internal admin" in text] == []
    assert "unexpected HTTP 404 answer from the endpoint" in shown["last_error"]
    # Not Firehose at all: retrying cannot help, so the connection is faulted at once and says where to look.
    assert shown["status"] == "faulted" and len(answers.hits) == 2
    assert [alert["type"] for alert in alerts] == ["Endpoint Not Usable"]


def test_test_connection_answers_within_a_few_seconds_when_the_endpoint_hangs(audience, internal_server):
    url, answers = internal_server
    answers.hang = True
    connection = connection_at(url, audience)
    started = time.monotonic()
    result = connection_test(connection=connection)
    assert time.monotonic() - started < 6
    assert result.ok is False and "timeout" in result.error.lower()


def test_an_endpoint_botocore_cannot_use_faults_the_connection_with_an_alert(audience, api):
    connection = connection_at("http://bücher.example:4566", audience)  # a valid URL that botocore refuses
    apply(audience, join("u1", CustomerId="c1"))

    tested = api.post(f"/api/v1/connections/{connection.pk}/test")
    drain(connection)

    assert tested.status_code == 200 and tested.json()["ok"] is False
    assert "xn--" in tested.json()["error"]
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED
    alert = SystemAlert.objects.get(connection=connection, type=SystemAlert.Type.ENDPOINT_NOT_USABLE)
    assert "Correct it in the configuration" in alert.last_message and alert.is_open
    assert connection.last_error == alert.last_message
    assert connections_sweep() == [], "a faulted connection is not kicked again"
    assert Delivery.objects.filter(connection=connection, status=Delivery.Status.PENDING).count() == 1


def test_a_secret_that_no_key_decrypts_faults_the_connection_with_an_alert(audience, emulator, api, settings):
    connection = connection_at(f"http://127.0.0.1:{emulator}", audience)
    apply(audience, join("u1", CustomerId="c1"))
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]  # the key it was encrypted with is gone

    tested = api.post(f"/api/v1/connections/{connection.pk}/test")
    drain(connection)

    assert tested.status_code == 200 and tested.json()["ok"] is False
    assert "FIELD_ENCRYPTION_KEYS" in tested.json()["error"]
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED
    alert = SystemAlert.objects.get(connection=connection, type=SystemAlert.Type.CREDENTIALS_NOT_USABLE)
    assert "FIELD_ENCRYPTION_KEYS" in alert.last_message and "Resume" in alert.last_message
    assert Membership.objects.filter(is_member=True).count() == 1


def test_an_unusable_endpoint_resolves_its_alert_once_fixed_and_resumed(audience, emulator, api):
    connection = connection_at("http://bücher.example:4566", audience)
    apply(audience, join("u1", CustomerId="c1"))
    drain(connection)
    configuration = connection.configuration
    response = api.patch(
        f"/api/v1/configurations/{configuration.pk}", {"endpoint_url": f"http://127.0.0.1:{emulator}"}, format="json"
    )
    assert response.status_code == 200
    api.post(f"/api/v1/connections/{connection.pk}/resume")
    drain(connection)
    alert = SystemAlert.objects.get(connection=connection, type=SystemAlert.Type.ENDPOINT_NOT_USABLE)
    assert alert.resolved_at is not None
