"""Roles: the Operators and Viewers groups made by migration integrations 0003_roles_groups.

Each test logs a staff user of one group into the real admin and checks what that user can do there, by what the pages
show and by what ends up in the database. AWS is moto; nothing of ours is mocked."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Group, Permission
from django.contrib.auth.models import User as StaffUser
from django.db import connection as db_connection
from django.db.migrations.loader import MigrationLoader
from django.test import Client

from api.models import ApiKey
from api.services import api_key_create
from audiences.models import Audience, User
from integrations.alerts import alert_raise
from integrations.connections import connection_pause
from integrations.models import Configuration, Connection, Delivery, SystemAlert

from ..factories import ACCESS_KEY_ID, SECRET_ACCESS_KEY, apply, join
from ..support.admin_pages import messages_of, run_action, url

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("role_groups")]

PASSWORD = "correct horse battery staple"
MIGRATION = ("integrations", "0003_roles_groups")

VIEW = {
    "api.view_apikey",
    "audiences.view_audience",
    "audiences.view_user",
    "integrations.view_connection",
    "integrations.view_delivery",
    "integrations.view_deliveryattempt",
    "integrations.view_systemalert",
}
OPERATE = {"integrations.operate_connection", "integrations.acknowledge_systemalert"}


def group_permissions(name: str) -> set[str]:
    group = Group.objects.get(name=name)
    return {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}


def staff_in(group: str) -> StaffUser:
    user = StaffUser.objects.create_user(username=group.lower(), password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


def logged_in(user: StaffUser) -> Client:
    """Logged in through the admin's own login form, as a person would."""
    client = Client()
    response = client.post(url("login"), {"username": user.username, "password": PASSWORD, "next": url("index")})
    assert response.status_code == 302 and response.url == url("index"), "the login was refused"
    return client


@pytest.fixture
def operator() -> Client:
    return logged_in(staff_in("Operators"))


@pytest.fixture
def viewer() -> Client:
    return logged_in(staff_in("Viewers"))


@pytest.fixture
def alert(connection: Connection) -> SystemAlert:
    alert_raise(connection=connection, type=SystemAlert.Type.ACCESS_DENIED, message="AccessDenied on PutRecordBatch")
    return SystemAlert.objects.get()


@pytest.fixture
def everything(connection: Connection, alert: SystemAlert) -> dict[str, str]:
    """A connection with a member, a delivery, an alert and an API key, and the admin pages that show them."""
    apply(connection.audience, join("p.fogg138", CustomerId="p.fogg138", Email="phileas@travelers.com"))
    api_key, _ = api_key_create(name="upstream", scopes=["ingest"])
    return {
        "index": url("index"),
        "audiences": url("audiences_audience_changelist"),
        "audience": url("audiences_audience_change", connection.audience_id),
        "users": url("audiences_user_changelist"),
        "user": url("audiences_user_change", User.objects.get().pk),
        "connections": url("integrations_connection_changelist"),
        "connection": url("integrations_connection_change", connection.pk),
        "connection history": url("integrations_connection_history", connection.pk),
        "alerts": url("integrations_systemalert_changelist"),
        "alert": url("integrations_systemalert_change", alert.pk),
        "deliveries": url("integrations_delivery_changelist"),
        "delivery": url("integrations_delivery_change", Delivery.objects.first().pk),
        "attempts": url("integrations_deliveryattempt_changelist"),
        "api keys": url("api_apikey_changelist"),
        "api key": url("api_apikey_change", api_key.pk),
    }


def configuration_pages(configuration: Configuration) -> list[str]:
    return [
        url("integrations_configuration_changelist"),
        url("integrations_configuration_add"),
        url("integrations_configuration_change", configuration.pk),
        url("integrations_configuration_history", configuration.pk),
        url("integrations_configuration_delete", configuration.pk),
    ]


def assert_shows_no_credentials(page: str, configuration: Configuration) -> None:
    assert ACCESS_KEY_ID not in page
    assert configuration.access_key_hint not in page
    assert SECRET_ACCESS_KEY not in page
    assert configuration.encrypted_secret_access_key not in page
    assert url("integrations_configuration_changelist") not in page  # no link to any configuration page


def offered_actions(page: str) -> list[str]:
    if 'name="action"' not in page:
        return []
    select = page.split('<select name="action"')[1].split("</select>")[0]
    return [part.split('"')[0] for part in select.split('<option value="')[1:] if not part.startswith('"')]


# --- the groups -----------------------------------------------------------------------------------------------------


def test_the_migration_gives_viewers_view_permissions_only():
    assert group_permissions("Viewers") == VIEW


def test_the_migration_gives_operators_view_permissions_and_the_operations():
    assert group_permissions("Operators") == VIEW | OPERATE


def test_neither_group_holds_any_permission_on_configurations():
    assert not Group.objects.filter(permissions__content_type__model="configuration").exists()


def test_the_roles_migration_is_idempotent_and_reversible():
    migration = importlib.import_module("integrations.migrations.0003_roles_groups")
    apps = MigrationLoader(db_connection).project_state(MIGRATION).apps
    schema_editor = SimpleNamespace(connection=db_connection)  # the functions only read the database alias
    configuration_permissions = Permission.objects.filter(content_type__model="configuration")
    Group.objects.get(name="Operators").permissions.add(*configuration_permissions)  # widened by hand

    migration.create_groups(apps, schema_editor)
    migration.create_groups(apps, schema_editor)

    assert Group.objects.filter(name__in=["Operators", "Viewers"]).count() == 2
    assert group_permissions("Operators") == VIEW | OPERATE, "set back to exactly the role"
    migration.delete_groups(apps, schema_editor)
    assert not Group.objects.filter(name__in=["Operators", "Viewers"]).exists()
    migration.create_groups(apps, schema_editor)
    assert group_permissions("Operators") == VIEW | OPERATE
    assert group_permissions("Viewers") == VIEW


# --- Operators ------------------------------------------------------------------------------------------------------


def test_an_operator_sees_every_page_but_never_the_credentials(operator, everything, configuration):
    for name, page in everything.items():
        response = operator.get(page)
        assert response.status_code == 200, name
        assert_shows_no_credentials(response.text, configuration)


def test_an_operator_sees_the_configuration_name_on_the_connection_and_audience_pages(
    operator, connection, configuration
):
    for page in (
        url("integrations_connection_change", connection.pk),
        url("audiences_audience_change", connection.audience_id),
    ):
        text = operator.get(page).text
        assert "Travel" in text
        assert url("integrations_configuration_change", configuration.pk) not in text


@pytest.mark.parametrize("client", ["operator", "viewer"])
def test_configuration_pages_are_forbidden(client, request, configuration):
    client = request.getfixturevalue(client)
    for page in configuration_pages(configuration):
        assert client.get(page).status_code == 403, page
    response = client.post(
        url("integrations_configuration_change", configuration.pk),
        {"name": "Stolen", "access_key_id": "AKIASTOLEN0000000001", "secret_access_key": "x" * 40},
    )
    assert response.status_code == 403
    configuration.refresh_from_db()
    assert configuration.name == "Travel" and configuration.secret_access_key == SECRET_ACCESS_KEY


@pytest.mark.parametrize("client", ["operator", "viewer"])
def test_the_admin_index_does_not_list_configurations(client, request, connection):
    page = request.getfixturevalue(client).get(url("index")).text
    assert url("integrations_connection_changelist") in page
    assert url("integrations_configuration_changelist") not in page


@pytest.mark.parametrize(
    "changelist, lookup",
    [
        ("integrations_connection", "configuration__access_key_id__startswith"),
        ("integrations_connection", "configuration__encrypted_secret_access_key__startswith"),
        ("integrations_systemalert", "connection__configuration__access_key_id__startswith"),
        ("integrations_delivery", "connection__configuration__access_key_id__startswith"),
    ],
)
def test_an_operator_cannot_probe_the_credentials_through_list_filters(operator, connection, changelist, lookup):
    response = operator.get(url(f"{changelist}_changelist"), {lookup: "AKIA"})

    assert response.status_code == 400  # Django refuses lookups that no list filter offers


def test_an_operator_is_offered_the_four_connection_actions_only(operator, connection):
    page = operator.get(url("integrations_connection_changelist")).text

    assert offered_actions(page) == ["test_connection", "resync", "pause", "resume"]


def test_an_operator_tests_a_connection(operator, connection, stream):
    response = run_action(operator, "integrations_connection_changelist", "test_connection", [connection])

    assert response.status_code == 302
    [message] = messages_of(response)
    assert "the stream is ACTIVE" in message
    connection.refresh_from_db()
    assert connection.stream_arn.endswith(":deliverystream/audience-stream")
    assert connection.last_tested_at is not None


def test_an_operator_resyncs_a_connection_once_confirmed(operator, connection):
    apply(connection.audience, join("p.fogg138", CustomerId="p.fogg138"), join("passepartout", CustomerId="pp"))
    Connection.objects.filter(pk=connection.pk).update(resync_cursor=None, resync_requested_at=None)

    confirmation = run_action(operator, "integrations_connection_changelist", "resync", [connection])

    assert confirmation.status_code == 200
    assert "Yes, resync" in confirmation.text
    connection.refresh_from_db()
    assert connection.resync_requested_at is None

    response = run_action(operator, "integrations_connection_changelist", "resync", [connection], post="yes")

    assert response.status_code == 302
    connection.refresh_from_db()
    assert connection.resync_cursor == 0 and connection.resync_total == 2
    assert connection.resync_requested_at is not None


def test_an_operator_pauses_and_resumes_a_connection(operator, connection):
    run_action(operator, "integrations_connection_changelist", "pause", [connection])
    connection.refresh_from_db()
    assert connection.status == Connection.Status.PAUSED

    run_action(operator, "integrations_connection_changelist", "resume", [connection])
    connection.refresh_from_db()
    assert connection.status == Connection.Status.ACTIVE


def test_an_operator_resumes_a_faulted_connection(operator, connection):
    Connection.objects.filter(pk=connection.pk).update(status=Connection.Status.FAULTED, consecutive_failures=4)

    run_action(operator, "integrations_connection_changelist", "resume", [connection])

    connection.refresh_from_db()
    assert connection.status == Connection.Status.ACTIVE and connection.consecutive_failures == 0


def test_an_operator_acknowledges_an_alert(operator, alert):
    page = operator.get(url("integrations_systemalert_changelist")).text
    assert offered_actions(page) == ["acknowledge"]

    response = run_action(operator, "integrations_systemalert_changelist", "acknowledge", [alert])

    assert messages_of(response) == ["Acknowledged 1 alert."]
    alert.refresh_from_db()
    assert alert.acknowledged is True and alert.acknowledged_at is not None


def test_an_operator_cannot_change_connection_settings(operator, connection, configuration):
    change = url("integrations_connection_change", connection.pk)

    page = operator.get(change).text
    response = operator.post(
        change,
        {"configuration": configuration.pk, "stream_name": "hijacked", "region": "eu-west-1", "append_newline": ""},
    )

    assert 'name="_save"' not in page and 'name="stream_name"' not in page
    assert response.status_code == 403
    connection.refresh_from_db()
    assert connection.stream_name == "audience-stream" and connection.region == "us-east-1"
    assert connection.append_newline is True


def test_an_operator_cannot_add_or_delete_connections(operator, connection, configuration):
    assert operator.get(url("integrations_connection_add")).status_code == 403
    assert operator.post(url("integrations_connection_delete", connection.pk), {"post": "yes"}).status_code == 403
    run_action(operator, "integrations_connection_changelist", "delete_selected", [connection], post="yes")

    assert Connection.objects.filter(pk=connection.pk).exists()


def test_an_operator_cannot_change_alerts_or_audiences(operator, alert):
    audience = alert.connection.audience

    assert operator.post(url("integrations_systemalert_change", alert.pk), {"count": 9}).status_code == 403
    assert operator.post(url("integrations_systemalert_delete", alert.pk), {"post": "yes"}).status_code == 403
    assert operator.post(url("audiences_audience_change", audience.pk), {"internal_name": "x"}).status_code == 403
    assert operator.post(url("audiences_audience_delete", audience.pk), {"post": "yes"}).status_code == 403
    alert.refresh_from_db()
    audience.refresh_from_db()
    assert alert.count == 1
    assert audience.internal_name == "low_engagement" and audience.deleted_at is None


def test_an_operator_cannot_create_or_revoke_api_keys(operator):
    api_key, _ = api_key_create(name="upstream", scopes=["ingest"])

    assert operator.get(url("api_apikey_add")).status_code == 403
    assert operator.post(url("api_apikey_add"), {"name": "mine", "scopes": ["manage"]}).status_code == 403
    assert offered_actions(operator.get(url("api_apikey_changelist")).text) == []
    run_action(operator, "api_apikey_changelist", "revoke", [api_key])

    assert list(ApiKey.objects.values_list("name", flat=True)) == ["upstream"]
    api_key.refresh_from_db()
    assert api_key.revoked_at is None


# --- Viewers --------------------------------------------------------------------------------------------------------


def test_a_viewer_sees_every_page_read_only_and_never_the_credentials(viewer, everything, configuration):
    for name, page in everything.items():
        response = viewer.get(page)
        assert response.status_code == 200, name
        assert 'name="_save"' not in response.text, name
        assert_shows_no_credentials(response.text, configuration)


@pytest.mark.parametrize(
    "changelist", ["integrations_connection", "integrations_systemalert", "audiences_audience", "api_apikey"]
)
def test_a_viewer_is_offered_no_actions(viewer, connection, alert, changelist):
    page = viewer.get(url(f"{changelist}_changelist")).text

    assert offered_actions(page) == []
    assert ACTION_CHECKBOX_NAME not in page


@pytest.mark.parametrize("action", ["test_connection", "resync", "pause", "resume"])
def test_a_viewer_cannot_run_connection_actions(viewer, connection, stream, action):
    if action == "resume":
        connection_pause(connection=connection)
    before = Connection.objects.filter(pk=connection.pk).values().get()

    response = run_action(viewer, "integrations_connection_changelist", action, [connection], post="yes")

    assert response.status_code == 200  # just the list again
    assert Connection.objects.filter(pk=connection.pk).values().get() == before


def test_a_viewer_cannot_acknowledge_alerts(viewer, alert):
    run_action(viewer, "integrations_systemalert_changelist", "acknowledge", [alert])

    alert.refresh_from_db()
    assert alert.acknowledged is False


def test_a_viewer_cannot_change_or_delete_anything(viewer, connection, configuration, alert):
    audience = connection.audience

    assert viewer.post(url("integrations_connection_change", connection.pk), {"stream_name": "x"}).status_code == 403
    assert viewer.post(url("integrations_connection_delete", connection.pk), {"post": "yes"}).status_code == 403
    assert viewer.post(url("audiences_audience_delete", audience.pk), {"post": "yes"}).status_code == 403
    assert viewer.get(url("integrations_connection_add")).status_code == 403
    assert viewer.get(url("audiences_audience_add")).status_code == 403
    run_action(viewer, "audiences_audience_changelist", "delete_selected", [audience], post="yes")

    connection.refresh_from_db()
    assert connection.stream_name == "audience-stream"
    assert Audience.objects.live().filter(pk=audience.pk).exists()


# --- superusers -----------------------------------------------------------------------------------------------------


def test_a_superuser_keeps_every_action_and_the_configuration_pages(admin_client, connection, alert, configuration):
    connections = admin_client.get(url("integrations_connection_changelist")).text
    alerts = admin_client.get(url("integrations_systemalert_changelist")).text
    change = admin_client.get(url("integrations_connection_change", connection.pk)).text

    assert offered_actions(connections) == ["delete_selected", "test_connection", "resync", "pause", "resume"]
    assert offered_actions(alerts) == ["acknowledge"]
    assert '<select name="configuration"' in change
    for page in configuration_pages(configuration):
        assert admin_client.get(page).status_code == 200, page
