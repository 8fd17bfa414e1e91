"""The Django admin: Configuration Settings, Connection Settings, System Alerts, the delivery logs, audiences,
users and API keys. Each test drives the admin like an operator would and checks what the operator (or the
database, or AWS) ends up seeing. AWS is moto; nothing of ours is mocked."""

from __future__ import annotations

import re

import boto3
import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection as db_connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from moto.core import DEFAULT_ACCOUNT_ID
from rest_framework.test import APIClient

from api.models import ApiKey
from audiences.models import Audience, User
from audiences.services import ChangeIn, audience_create, membership_changes_apply
from integrations.alerts import alert_raise
from integrations.configurations import configuration_create
from integrations.connections import connection_create, connection_pause
from integrations.models import Configuration, Connection, Delivery, DeliveryAttempt, SystemAlert
from integrations.outbox import OUTBOX
from integrations.retention import connections_purge_deleted

from ..support.admin_pages import messages_of, result_rows, run_action, staff_client, url

pytestmark = pytest.mark.django_db

ACCESS_KEY_ID = "AKIAADMINTEST0000001"
SECRET = "s3cr3t/Admin+Key+NeverShown0123456789abcd"
OTHER_SECRET = "an0ther/Secret+Key+AlsoNeverShown987654321"


def configuration_form(**overrides: str) -> dict[str, str]:
    data = {
        "name": "Travel",
        "access_key_id": ACCESS_KEY_ID,
        "secret_access_key": SECRET,
        "send_remove_on_identity_change": "on",
        "endpoint_url": "",
    }
    data.update(overrides)
    return data


def readonly_value(page: str, field: str) -> str:
    """What a change page shows for one read-only field."""
    return page.split(f"field-{field}")[1].split('<div class="readonly">')[1].split("</div>")[0]


def create_stream(name: str) -> str:
    """A DirectPut delivery stream in moto; returns its ARN."""
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="audience-records")
    return boto3.client("firehose", region_name="us-east-1").create_delivery_stream(
        DeliveryStreamName=name,
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/firehose",
            "BucketARN": "arn:aws:s3:::audience-records",
        },
    )["DeliveryStreamARN"]


def add_members(audience: Audience, *user_ids: str) -> None:
    membership_changes_apply(
        audience=audience,
        changes=[ChangeIn(user_id=user_id, is_member=True, identities={"CustomerId": user_id}) for user_id in user_ids],
        outbox=OUTBOX,
    )


@pytest.fixture
def travel() -> Configuration:
    return configuration_create(name="Travel", access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET)


@pytest.fixture
def paused_connection(audience: Audience, travel: Configuration) -> Connection:
    """A connection created paused: no initial sync runs, so the tests can see what an action starts."""
    return connection_create(audience=audience, configuration=travel, stream_name="audience-stream", status="paused")


@pytest.fixture
def active_connection(audience: Audience, travel: Configuration) -> Connection:
    return connection_create(audience=audience, configuration=travel, stream_name="audience-stream")


@pytest.fixture
def operator() -> Client:
    return staff_client("operator", "integrations.view_connection", "integrations.operate_connection")


@pytest.fixture
def viewer() -> Client:
    return staff_client("viewer", "integrations.view_connection")


# --- every page renders -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        "audiences_audience",
        "audiences_user",
        "integrations_configuration",
        "integrations_connection",
        "integrations_systemalert",
        "integrations_delivery",
        "integrations_deliveryattempt",
        "api_apikey",
    ],
)
def test_every_changelist_renders(admin_client, active_connection, model):
    add_members(active_connection.audience, "p.fogg138")
    alert_raise(connection=active_connection, type=SystemAlert.Type.ACCESS_DENIED, message="denied")
    assert admin_client.get(url(f"{model}_changelist")).status_code == 200


def test_the_seed_words_head_the_settings_while_the_lists_keep_their_own_titles(admin_client, active_connection):
    configuration, connection = active_connection.configuration, active_connection
    for page in (url("integrations_configuration_add"), url("integrations_configuration_change", configuration.pk)):
        assert 'class="fieldset-heading">Configuration Settings</h2>' in admin_client.get(page).text, page
    for page in (url("integrations_connection_add"), url("integrations_connection_change", connection.pk)):
        assert 'class="fieldset-heading">Connection Settings</h2>' in admin_client.get(page).text, page
    for changelist, title in [
        ("integrations_configuration", "Select configuration to change"),
        ("integrations_connection", "Select connection to change"),
        ("integrations_systemalert", "System Alerts"),
    ]:
        assert f"<h1>{title}</h1>" in admin_client.get(url(f"{changelist}_changelist")).text


# --- Configuration Settings: the write-only secret ----------------------------------------------------------------


def test_the_add_page_asks_for_the_secret_in_an_empty_password_field(admin_client):
    page = admin_client.get(url("integrations_configuration_add")).text

    assert 'type="password" name="secret_access_key"' in page
    assert "never shown again" in page


def test_it_creates_a_configuration_whose_secret_is_stored_encrypted_and_never_shown(admin_client):
    response = admin_client.post(url("integrations_configuration_add"), configuration_form(), follow=True)

    assert response.status_code == 200
    configuration = Configuration.objects.get(name="Travel")
    assert SECRET not in configuration.encrypted_secret_access_key
    assert configuration.secret_access_key == SECRET
    assert SECRET not in response.text
    for page in (
        url("integrations_configuration_changelist"),
        url("integrations_configuration_change", configuration.pk),
        url("integrations_configuration_history", configuration.pk),
    ):
        assert SECRET not in admin_client.get(page).text, page
    assert not any(SECRET in entry.change_message for entry in LogEntry.objects.all())


def test_it_shows_only_the_last_four_characters_of_the_access_key_id_in_the_list(admin_client, travel):
    page = admin_client.get(url("integrations_configuration_changelist")).text

    assert "…0001" in page
    assert ACCESS_KEY_ID not in page


def test_it_refuses_a_new_configuration_without_a_secret(admin_client):
    response = admin_client.post(url("integrations_configuration_add"), configuration_form(secret_access_key=""))

    assert response.status_code == 200
    assert "Required: the Secret Access Key" in response.text
    assert not Configuration.objects.exists()


def test_a_blank_secret_on_edit_keeps_the_stored_one(admin_client, travel):
    response = admin_client.post(
        url("integrations_configuration_change", travel.pk),
        configuration_form(name="Travel EU", secret_access_key="", send_remove_on_identity_change=""),
    )

    assert response.status_code == 302
    travel.refresh_from_db()
    assert travel.name == "Travel EU"
    assert travel.send_remove_on_identity_change is False
    assert travel.secret_access_key == SECRET


def test_a_new_secret_on_edit_replaces_the_old_one_and_is_not_shown_either(admin_client, travel):
    change = url("integrations_configuration_change", travel.pk)
    response = admin_client.post(change, configuration_form(secret_access_key=OTHER_SECRET))

    assert response.status_code == 302
    travel.refresh_from_db()
    assert travel.secret_access_key == OTHER_SECRET
    assert OTHER_SECRET not in travel.encrypted_secret_access_key
    page = admin_client.get(change).text
    assert OTHER_SECRET not in page and SECRET not in page
    assert "Leave blank to keep it" in page
    history = admin_client.get(url("integrations_configuration_history", travel.pk)).text
    assert "Secret Access Key" in history
    assert OTHER_SECRET not in history


def test_the_secret_is_marked_sensitive_in_error_reports(admin_client, travel):
    for page in (url("integrations_configuration_add"), url("integrations_configuration_change", travel.pk)):
        response = admin_client.post(page, configuration_form(access_key_id="not a key id"))
        assert response.wsgi_request.sensitive_post_parameters == ("secret_access_key",)


# --- Connection Settings --------------------------------------------------------------------------------------------


def test_creating_a_connection_in_the_admin_starts_the_initial_sync(admin_client, audience, travel):
    add_members(audience, "p.fogg138", "passepartout")

    response = admin_client.post(
        url("integrations_connection_add"),
        {
            "audience": audience.pk,
            "configuration": travel.pk,
            "stream_name": "audience-stream",
            "region": "eu-west-1",
            "send_anonymous_users": "on",
            "forward_email_addresses": "on",
            "forward_customer_ids": "on",
            "forward_idfas": "on",
            "identities_to_exclude": ["FacebookId", "TwitterId"],
            "append_newline": "on",
        },
    )

    assert response.status_code == 302, response.content
    connection = Connection.objects.get()
    assert connection.resync_cursor is not None
    assert connection.resync_total == 2
    assert connection.status == Connection.Status.ACTIVE
    assert connection.region == "eu-west-1"
    assert connection.identities_to_exclude == ["FacebookId", "TwitterId"]
    assert connection.forward_google_advertising_ids is False


def test_the_add_form_offers_regions_and_identities_as_choices(admin_client, audience, travel):
    page = admin_client.get(url("integrations_connection_add")).text

    assert '<select name="region"' in page
    assert '<option value="us-east-1" selected>' in page
    assert 'type="checkbox" name="identities_to_exclude" value="AppleVendorIdentifier"' in page


def test_the_add_form_does_not_offer_deleted_audiences(admin_client, audience, travel):
    gone = audience_create(internal_name="gone")
    admin_client.post(url("audiences_audience_delete", gone.pk), {"post": "yes"})

    page = admin_client.get(url("integrations_connection_add")).text

    assert f'value="{audience.pk}"' in page
    assert f'value="{gone.pk}"' not in page


def test_editing_a_connection_saves_the_settings_and_keeps_the_audience(admin_client, active_connection, travel):
    other = audience_create(internal_name="other")
    response = admin_client.post(
        url("integrations_connection_change", active_connection.pk),
        {
            "audience": other.pk,
            "configuration": travel.pk,
            "stream_name": "renamed-stream",
            "region": "us-west-2",
            "identities_to_exclude": ["Email"],
        },
    )

    assert response.status_code == 302, response.content
    active_connection.refresh_from_db()
    assert active_connection.stream_name == "renamed-stream"
    assert active_connection.region == "us-west-2"
    assert active_connection.identities_to_exclude == ["Email"]
    assert active_connection.send_anonymous_users is False
    assert active_connection.audience_id != other.pk


def test_the_changelist_shows_status_and_backlog_in_a_constant_number_of_queries(admin_client, travel):
    def changelist_queries() -> int:
        with CaptureQueriesContext(db_connection) as queries:
            assert admin_client.get(url("integrations_connection_changelist")).status_code == 200
        return len(queries)

    first = audience_create(internal_name="first")
    add_members(first, "a", "b", "c")
    connection_create(audience=first, configuration=travel, stream_name="first-stream", status="paused")
    add_members(first, "d", "e")  # two changes queued while paused
    one_connection = changelist_queries()

    for n in range(3):
        audience = audience_create(internal_name=f"more{n}")
        connection_create(audience=audience, configuration=travel, stream_name=f"more-{n}")
        add_members(audience, f"user{n}")

    assert changelist_queries() == one_connection
    page = admin_client.get(url("integrations_connection_changelist")).text
    assert '<td class="field-backlog">2</td>' in page
    assert "paused</span>" in page and "active</span>" in page


def test_the_change_page_shows_the_filled_in_iam_policy_and_status(admin_client, active_connection):
    add_members(active_connection.audience, "p.fogg138")

    page = admin_client.get(url("integrations_connection_change", active_connection.pk)).text

    assert '<pre id="iam-policy-json">{' in page
    assert 'class="button copy-button" data-copy-target="iam-policy-json"' in page
    assert "firehose:PutRecordBatch" in page
    assert "arn:aws:firehose:us-east-1:{account-id}:deliverystream/audience-stream" in page
    assert 'id="resync-progress" data-state="running"' in page
    assert "Queued 0 of 0 members · sent 0 · remaining 0" in page
    assert '<span id="connection-backlog">1</span> record pending' in page  # the backlog: one change queued
    assert '<select name="audience"' not in page


def test_the_resync_action_asks_for_confirmation_first(admin_client, paused_connection):
    add_members(paused_connection.audience, "p.fogg138", "passepartout", "fix")

    response = run_action(admin_client, "integrations_connection_changelist", "resync", [paused_connection])

    assert response.status_code == 200
    assert "Yes, resync" in response.text
    assert '<input type="hidden" name="post" value="yes">' in response.text
    assert "<td>3</td>" in response.text  # the audience's member count
    paused_connection.refresh_from_db()
    assert paused_connection.resync_cursor is None
    assert paused_connection.resync_requested_at is None


def test_the_resync_action_runs_once_confirmed(admin_client, paused_connection):
    add_members(paused_connection.audience, "p.fogg138", "passepartout", "fix")

    response = run_action(admin_client, "integrations_connection_changelist", "resync", [paused_connection], post="yes")

    assert response.status_code == 302
    paused_connection.refresh_from_db()
    assert paused_connection.resync_cursor == 0
    assert paused_connection.resync_total == 3
    assert any("Resync started on 1 connection" in message for message in messages_of(response))


def test_pause_and_resume_actions_change_the_status(admin_client, active_connection, travel):
    other = connection_create(
        audience=audience_create(internal_name="other"), configuration=travel, stream_name="other"
    )
    connection_pause(connection=other)

    response = run_action(admin_client, "integrations_connection_changelist", "pause", [active_connection, other])

    active_connection.refresh_from_db()
    assert active_connection.status == Connection.Status.PAUSED
    assert messages_of(response) == [
        "Paused 1 connection: changes accumulate and nothing is sent. 1 connection was already paused."
    ]
    admin_client.get(url("integrations_connection_changelist"))  # shows (and so clears) the messages

    response = run_action(admin_client, "integrations_connection_changelist", "resume", [active_connection, other])

    assert set(Connection.objects.values_list("status", flat=True)) == {Connection.Status.ACTIVE}
    assert messages_of(response) == ["Resumed 2 connections: the backlog is sent in order."]


def test_the_test_connection_action_reports_the_stream_arn(admin_client, active_connection, aws):
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="audience-records")
    arn = boto3.client("firehose", region_name="us-east-1").create_delivery_stream(
        DeliveryStreamName="audience-stream",
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/firehose",
            "BucketARN": "arn:aws:s3:::audience-records",
        },
    )["DeliveryStreamARN"]

    response = run_action(admin_client, "integrations_connection_changelist", "test_connection", [active_connection])

    assert messages_of(response) == [f"{active_connection}: the stream is ACTIVE. ARN: {arn}"]
    active_connection.refresh_from_db()
    assert active_connection.stream_arn == arn
    page = admin_client.get(url("integrations_connection_change", active_connection.pk)).text
    assert f"arn:aws:firehose:us-east-1:{DEFAULT_ACCOUNT_ID}:deliverystream/audience-stream" in page


def test_the_test_connection_action_explains_a_missing_stream_in_plain_words(admin_client, active_connection, aws):
    response = run_action(admin_client, "integrations_connection_changelist", "test_connection", [active_connection])

    [message] = messages_of(response)
    assert "The delivery stream does not exist in this region." in message
    assert SECRET not in message


def test_the_changelist_warns_about_faulted_connections_and_open_alerts(admin_client, active_connection):
    Connection.objects.filter(pk=active_connection.pk).update(status=Connection.Status.FAULTED)
    alert_raise(connection=active_connection, type=SystemAlert.Type.STREAM_NOT_FOUND, message="gone")

    page = admin_client.get(url("integrations_connection_changelist")).text

    assert "1 connection faulted" in page
    assert "1 open system alert" in page


def test_deleting_a_connection_summarises_what_goes_with_it(admin_client, active_connection):
    add_members(active_connection.audience, "p.fogg138", "passepartout")
    delete = url("integrations_connection_delete", active_connection.pk)

    confirmation = admin_client.get(delete).text

    assert "2 records still waiting in the backlog, which will never be sent" in confirmation
    assert "Deliveries: 2" in confirmation
    assert "deleted in the background" in confirmation
    admin_client.post(delete, {"post": "yes"})
    assert not Connection.objects.exists(), "gone from every list at once"
    assert connections_purge_deleted().finished
    assert not Connection.all_objects.exists() and not Delivery.objects.exists()
    assert Audience.objects.get().member_count == 2


def test_the_connection_form_explains_how_the_forward_toggles_and_the_exclusions_combine(
    admin_client, audience, travel
):
    page = admin_client.get(url("integrations_connection_add")).text

    assert "forwarded only if its Forward toggle is on <strong>and</strong> it is not ticked" in page
    assert "Off: never forwarded. On: forwarded unless Email Address is ticked under Identities To Exclude." in page
    groups = ["<label>Account IDs</label>", 'value="Email"', "<label>Device IDs</label>", 'value="AndroidId"']
    groups += ["<label>Other IDs</label>", 'value="Other10"']
    assert [page.index(marker) for marker in groups] == sorted(page.index(marker) for marker in groups)


def test_a_shared_configuration_cannot_be_added_changed_or_deleted_from_the_connection_form(
    admin_client, active_connection
):
    page = admin_client.get(url("integrations_connection_change", active_connection.pk)).text

    assert '<select name="configuration"' in page
    for link in ("add_id_configuration", "change_id_configuration", "delete_id_configuration"):
        assert f'id="{link}"' not in page


# --- the connection change page: Test connection, Resync, Pause and Resume ------------------------------------------


def test_the_change_page_offers_the_operations_to_those_who_may_run_them(
    admin_client, operator, viewer, paused_connection
):
    change = url("integrations_connection_change", paused_connection.pk)

    for client in (admin_client, operator):
        page = client.get(change).text
        assert 'id="operate-test"' in page and 'id="operate-resync"' in page
        assert 'id="operate-resume"' in page and 'id="operate-pause"' not in page  # paused: it can only resume
    page = viewer.get(change).text
    assert 'id="operate-' not in page
    assert url("integrations_connection_resume", paused_connection.pk) not in page


def test_an_operator_pauses_and_resumes_a_connection_from_its_change_page(operator, active_connection):
    change = url("integrations_connection_change", active_connection.pk)

    response = operator.post(url("integrations_connection_pause", active_connection.pk))

    assert response.status_code == 302 and response.url == change
    assert messages_of(response) == ["Paused 1 connection: changes accumulate and nothing is sent."]
    active_connection.refresh_from_db()
    assert active_connection.status == Connection.Status.PAUSED
    page = operator.get(change).text
    assert 'id="operate-resume"' in page and 'id="operate-pause"' not in page

    response = operator.post(url("integrations_connection_resume", active_connection.pk))

    assert response.status_code == 302 and response.url == change
    assert messages_of(response) == ["Resumed 1 connection: the backlog is sent in order."]
    active_connection.refresh_from_db()
    assert active_connection.status == Connection.Status.ACTIVE
    history = LogEntry.objects.filter(object_id=str(active_connection.pk)).order_by("pk")
    assert [entry.change_message for entry in history] == ["Paused.", "Resumed."]


def test_pause_and_resume_need_a_post(operator, active_connection):
    assert operator.get(url("integrations_connection_pause", active_connection.pk)).status_code == 405

    active_connection.refresh_from_db()
    assert active_connection.status == Connection.Status.ACTIVE


def test_test_connection_on_the_change_page_reports_the_stream_and_keeps_its_arn(operator, active_connection, aws):
    arn = create_stream("audience-stream")

    response = operator.post(url("integrations_connection_test", active_connection.pk))

    assert response.status_code == 302
    assert response.url == url("integrations_connection_change", active_connection.pk)
    assert messages_of(response) == [f"{active_connection}: the stream is ACTIVE. ARN: {arn}"]
    active_connection.refresh_from_db()
    assert active_connection.stream_arn == arn and active_connection.last_tested_at is not None


def test_resync_on_the_change_page_asks_for_confirmation_then_runs(operator, paused_connection):
    add_members(paused_connection.audience, "p.fogg138", "passepartout")
    resync = url("integrations_connection_resync", paused_connection.pk)

    confirmation = operator.get(resync)

    assert confirmation.status_code == 200
    assert "Yes, resync" in confirmation.text and "<td>2</td>" in confirmation.text
    assert f'<a href="{url("integrations_connection_changelist")}">Connections</a>' in confirmation.text
    assert '<span class="badge badge-muted">paused</span>' in confirmation.text
    assert 'class="button cancel-link"' in confirmation.text and "delete-confirmation" in confirmation.text
    paused_connection.refresh_from_db()
    assert paused_connection.resync_requested_at is None

    response = operator.post(resync, {"post": "yes"})

    assert response.status_code == 302
    assert response.url == url("integrations_connection_change", paused_connection.pk)
    assert messages_of(response) == [
        "Resync started on 1 connection: every current member is sent again after the backlog."
    ]
    paused_connection.refresh_from_db()
    assert paused_connection.resync_cursor == 0 and paused_connection.resync_total == 2


@pytest.mark.parametrize("operation", ["test", "resync", "pause", "resume"])
def test_a_viewer_is_refused_every_operation_on_the_change_page(viewer, paused_connection, operation):
    before = Connection.objects.filter(pk=paused_connection.pk).values().get()
    operate = url(f"integrations_connection_{operation}", paused_connection.pk)

    assert viewer.post(operate, {"post": "yes"}).status_code == 403
    assert viewer.get(operate).status_code == 403
    assert Connection.objects.filter(pk=paused_connection.pk).values().get() == before


# --- System Alerts ------------------------------------------------------------------------------------------------


def test_system_alerts_are_read_only(admin_client, active_connection):
    alert_raise(connection=active_connection, type=SystemAlert.Type.ACCESS_DENIED, message="AccessDenied")
    alert = SystemAlert.objects.get()

    assert admin_client.get(url("integrations_systemalert_add")).status_code == 403
    assert admin_client.post(url("integrations_systemalert_change", alert.pk), {"count": 5}).status_code == 403
    assert admin_client.post(url("integrations_systemalert_delete", alert.pk), {"post": "yes"}).status_code == 403
    page = admin_client.get(url("integrations_systemalert_change", alert.pk)).text
    assert 'name="_save"' not in page
    alert.refresh_from_db()
    assert alert.count == 1


def test_acknowledging_alerts_closes_them_and_the_open_filter_hides_them(admin_client, active_connection):
    alert_raise(connection=active_connection, type=SystemAlert.Type.ACCESS_DENIED, message="AccessDenied")
    alert_raise(connection=active_connection, type=SystemAlert.Type.STREAM_NOT_FOUND, message="gone")
    denied = SystemAlert.objects.get(type=SystemAlert.Type.ACCESS_DENIED)

    response = run_action(admin_client, "integrations_systemalert_changelist", "acknowledge", [denied])

    assert messages_of(response) == ["Acknowledged 1 alert."]
    denied.refresh_from_db()
    assert denied.acknowledged is True and denied.acknowledged_at is not None
    open_page = admin_client.get(url("integrations_systemalert_changelist") + "?open=yes").text
    assert "Stream Not Found" in open_page
    assert "Access Denied" not in result_rows(open_page)
    closed_page = admin_client.get(url("integrations_systemalert_changelist") + "?open=no").text
    assert "Access Denied" in result_rows(closed_page)
    by_connection = f"?connection__id__exact={active_connection.pk}"
    assert admin_client.get(url("integrations_systemalert_changelist") + by_connection).status_code == 200


# --- delivery logs ------------------------------------------------------------------------------------------------


def test_the_delivery_logs_are_read_only(admin_client, active_connection):
    add_members(active_connection.audience, "p.fogg138")
    delivery = Delivery.objects.get()

    assert admin_client.get(url("integrations_delivery_add")).status_code == 403
    assert admin_client.get(url("integrations_deliveryattempt_add")).status_code == 403
    assert admin_client.post(url("integrations_delivery_change", delivery.pk), {"status": 2}).status_code == 403
    assert admin_client.post(url("integrations_delivery_delete", delivery.pk), {"post": "yes"}).status_code == 403
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING


def test_the_delivery_logs_filter_by_status_and_fold_long_errors(admin_client, active_connection):
    add_members(active_connection.audience, "p.fogg138")
    long_error = "ServiceUnavailableException: Slow down. " + "Rate exceeded for delivery stream. " * 10
    DeliveryAttempt.objects.create(
        connection=active_connection,
        operation="PutRecordBatch",
        records=1,
        bytes=120,
        outcome=DeliveryAttempt.Outcome.RETRYABLE,
        error_code="ServiceUnavailableException",
        error_message=long_error,
        started_at=timezone.now(),
        duration_ms=12,
    )

    attempts = admin_client.get(url("integrations_deliveryattempt_changelist") + "?outcome__exact=retryable").text
    deliveries = admin_client.get(url("integrations_delivery_changelist") + "?status__exact=1").text

    assert "<details><summary>ServiceUnavailable<wbr>Exception</summary>" in attempts
    assert f"<pre>{long_error}</pre>" in attempts
    assert "p.fogg138" in deliveries
    assert "time=24h" in deliveries  # the time filter (a date hierarchy would list every date of the table)


def test_a_delivery_shows_its_record_date_and_no_next_attempt_once_delivered(admin_client, active_connection):
    add_members(active_connection.audience, "p.fogg138")
    delivery = Delivery.objects.get()
    Delivery.objects.filter(pk=delivery.pk).update(timestamp=1795857560)
    page = url("integrations_delivery_change", delivery.pk)

    pending = admin_client.get(page).text
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.DELIVERED, delivered_at=timezone.now())
    delivered = admin_client.get(page).text

    assert readonly_value(pending, "record_timestamp") == "1795857560 (2026-11-28 09:19 UTC)"
    assert " UTC</span> (" in readonly_value(pending, "next_attempt")
    assert readonly_value(delivered, "next_attempt") == "-"
    deliveries = admin_client.get(url("integrations_delivery_changelist")).text
    assert url("integrations_connection_change", active_connection.pk) in deliveries
    assert url("audiences_user_change", User.objects.get().pk) in deliveries


# --- audiences and users ------------------------------------------------------------------------------------------


def test_deleting_an_audience_in_the_admin_soft_deletes_it(admin_client, active_connection):
    audience = active_connection.audience
    add_members(audience, "p.fogg138")
    delete = url("audiences_audience_delete", audience.pk)

    confirmation = admin_client.get(delete)
    assert confirmation.status_code == 200
    assert "AudienceDeleted" in confirmation.text

    response = admin_client.post(delete, {"post": "yes"})

    assert response.status_code == 302
    audience = Audience.objects.get(pk=audience.pk)
    assert audience.deleted_at is not None
    assert audience.memberships.count() == 1
    assert Delivery.objects.filter(connection=active_connection, kind=Delivery.Kind.AUDIENCE_DELETED).count() == 1


def test_the_delete_selected_action_soft_deletes_too(admin_client, audience):
    other = audience_create(internal_name="other")

    confirmation = run_action(admin_client, "audiences_audience_changelist", "delete_selected", [audience, other])
    assert confirmation.status_code == 200
    assert Audience.objects.live().count() == 2

    run_action(admin_client, "audiences_audience_changelist", "delete_selected", [audience, other], post="yes")

    assert Audience.objects.count() == 2
    assert Audience.objects.live().count() == 0


def test_an_audience_is_created_and_renamed_through_the_admin(admin_client):
    admin_client.post(url("audiences_audience_add"), {"internal_name": "low_engagement", "external_name": ""})
    audience = Audience.objects.get()

    response = admin_client.post(
        url("audiences_audience_change", audience.pk),
        {
            "internal_name": "low_engagement",
            "external_name": "LowEngagement",
            "connections-TOTAL_FORMS": "0",
            "connections-INITIAL_FORMS": "0",
        },
    )

    assert response.status_code == 302, response.content
    audience.refresh_from_db()
    assert audience.name == "LowEngagement"


def test_the_audience_page_lists_its_connections(admin_client, active_connection):
    page = admin_client.get(url("audiences_audience_change", active_connection.audience.pk)).text

    assert url("integrations_connection_change", active_connection.pk) in page
    assert "audience-stream" in page


def test_users_are_found_by_user_id_and_cannot_be_edited(admin_client, audience):
    add_members(audience, "p.fogg138", "passepartout")
    user = User.objects.get(external_id="p.fogg138")

    page = admin_client.get(url("audiences_user_changelist") + "?q=p.fogg").text

    assert "p.fogg138" in page and "passepartout" not in page
    assert admin_client.get(url("audiences_user_add")).status_code == 403
    assert admin_client.post(url("audiences_user_change", user.pk), {"external_id": "x"}).status_code == 403
    assert "LowEngagement" in admin_client.get(url("audiences_user_change", user.pk)).text


def test_a_user_without_identities_reads_as_anonymous(admin_client, audience):
    membership_changes_apply(
        audience=audience, changes=[ChangeIn(user_id="anonymous-42", is_member=True)], outbox=OUTBOX
    )
    user = User.objects.get()

    assert "none (anonymous)" in result_rows(admin_client.get(url("audiences_user_changelist")).text)
    assert readonly_value(admin_client.get(url("audiences_user_change", user.pk)).text, "identities_pretty") == (
        "none (anonymous)"
    )


# --- API keys -----------------------------------------------------------------------------------------------------


def test_an_api_key_created_in_the_admin_is_shown_once_and_stored_hashed(admin_client):
    response = admin_client.post(url("api_apikey_add"), {"name": "upstream", "scopes": ["ingest", "manage"]})

    [shown] = [message for message in messages_of(response) if "shown this once" in message]
    key = shown.rsplit(" ", 1)[1]
    api_key = ApiKey.objects.get()
    assert api_key.key_hash == ApiKey.hash(key)
    assert api_key.scopes == ["ingest", "manage"]
    change = url("api_apikey_change", api_key.pk)
    assert key in admin_client.get(change).text  # the next page shows the message, once
    page = admin_client.get(change).text
    assert key not in page and api_key.key_hash not in page
    assert 'type="checkbox" name="scopes" value="manage" id="id_scopes_1" checked' in page

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get("/api/v1/alerts").status_code == 200


def test_a_revoked_api_key_is_refused(admin_client):
    created = admin_client.post(url("api_apikey_add"), {"name": "upstream", "scopes": ["manage"]})
    key = next(m for m in messages_of(created) if "shown this once" in m).rsplit(" ", 1)[1]
    api_key = ApiKey.objects.get()
    admin_client.get(url("api_apikey_changelist"))  # shows (and so clears) the messages

    response = run_action(admin_client, "api_apikey_changelist", "revoke", [api_key])

    assert messages_of(response) == ["Revoked 1 API key: the API refuses them from now on."]
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get("/api/v1/alerts").status_code == 401


# --- the admin index: health summary ------------------------------------------------------------------------------


def test_the_index_sums_up_connections_alerts_backlog_and_the_last_delivery(admin_client, travel):
    connections = {}
    for name, status in [("a", "active"), ("b", "active"), ("c", "paused"), ("d", "paused")]:
        connections[name] = connection_create(
            audience=audience_create(internal_name=name), configuration=travel, stream_name=name, status=status
        )
    Connection.objects.filter(pk=connections["d"].pk).update(status=Connection.Status.FAULTED)
    add_members(connections["a"].audience, "p.fogg138", "passepartout")
    add_members(connections["c"].audience, "fix")
    Delivery.objects.filter(connection=connections["a"]).update(status=Delivery.Status.DELIVERED)
    add_members(connections["a"].audience, "aouda")
    Connection.objects.filter(pk=connections["b"].pk).update(last_delivered_at=parse_datetime("2026-11-28T09:21Z"))
    alert_raise(connection=connections["d"], type=SystemAlert.Type.STREAM_NOT_FOUND, message="gone")
    alert_raise(connection=connections["d"], type=SystemAlert.Type.RETRY_LIMIT_EXCEEDED, message="gave up")
    alert_raise(connection=connections["a"], type=SystemAlert.Type.ACCESS_DENIED, message="denied")
    SystemAlert.objects.filter(type=SystemAlert.Type.ACCESS_DENIED).update(acknowledged=True)

    page = admin_client.get(url("index")).text

    summary = page.split('id="health-summary"')[1].split("</table>")[0]
    for text in ("2 active</span>", "1 paused</span>", "1 faulted</span>"):
        assert text in summary
    assert '<span class="badge badge-bad">2</span>' in summary
    assert '<td id="health-backlog">2 records pending</td>' in summary  # aouda on a, fix on c
    assert "2026-11-28 09:21 UTC" in summary
    assert page.index('id="health-summary"') < page.index("app-integrations")  # above the app list


def test_the_index_shows_no_red_badge_without_open_alerts(admin_client, active_connection):
    summary = admin_client.get(url("index")).text.split('id="health-summary"')[1].split("</table>")[0]

    assert '<span class="badge badge-muted">0</span>' in summary
    assert "badge-bad" not in summary


def test_the_index_summary_is_for_those_who_may_see_connections(active_connection):
    alerts_only = staff_client("alerts", "integrations.view_systemalert")
    connections_only = staff_client("connections", "integrations.view_connection")

    assert 'id="health-summary"' not in alerts_only.get(url("index")).text
    page = connections_only.get(url("index")).text
    assert 'id="health-summary"' in page and 'id="health-alerts"' not in page


def test_the_index_summary_takes_a_fixed_number_of_queries_and_counts_pending_rows_only(
    admin_client, travel, django_assert_max_num_queries
):
    def index_queries() -> list[str]:
        with CaptureQueriesContext(db_connection) as queries:
            assert admin_client.get(url("index")).status_code == 200
        return [query["sql"] for query in queries.captured_queries]

    first = connection_create(audience=audience_create(internal_name="first"), configuration=travel, stream_name="s")
    add_members(first.audience, "a")
    few = index_queries()
    for n in range(4):
        more = connection_create(
            audience=audience_create(internal_name=f"more{n}"), configuration=travel, stream_name=f"s{n}"
        )
        add_members(more.audience, f"user{n}", f"other{n}")
        alert_raise(connection=more, type=SystemAlert.Type.ACCESS_DENIED, message="denied")
    Delivery.objects.filter(connection=first).update(status=Delivery.Status.DELIVERED)

    with django_assert_max_num_queries(len(few)):
        admin_client.get(url("index"))
    delivery_queries = [sql for sql in index_queries() if re.search(r"integrations_delivery\b", sql)]
    assert len(delivery_queries) == 2  # the backlog, and the backlogs of the worst connections
    for sql in delivery_queries:  # pending rows only (the backlog's partial index), and a bounded count
        assert re.search(r'\."?status"? = 1', sql) and "LIMIT" in sql, sql
    assert len(few) <= 8
