"""The operator's views: System Alerts (ranking by window, drill-down, acknowledge all, auto-resolve, masked samples,
the header badge), connection health (status, backlog, 24 h chart, p95, resync progress, IAM policy), the delivery log
(attempts, filters, Retry failed, the capped paginator) and the admin index's health summary. Each test drives the real
services and admin pages against the database and moto; nothing of ours is mocked."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.auth.models import User as StaffUser
from django.db import connection as db_connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audiences.models import Audience, User
from audiences.services import audience_create
from console.paginators import CappedPaginator
from integrations.alerts import RESOLVED_BY_DELIVERY, alert_raise, alerts_resolve_on_delivery
from integrations.connections import connection_create, connection_pause, connection_resume, connection_resync
from integrations.delivery import connection_drain
from integrations.models import (
    AlertHourlyCount,
    Connection,
    Delivery,
    DeliveryAttempt,
    DeliveryFailure,
    DrainLease,
    SystemAlert,
)
from integrations.selectors import alert_ranking, resync_progress
from integrations.stats import hour_of

from ..factories import apply, join, members
from ..support.admin_pages import messages_of, result_rows, run_action, url
from ..support.drains import drain
from ..support.emulator import customer_ids, fail_entries, firehose_behaviour, throttle_first

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("role_groups")]

PASSWORD = "correct horse battery staple"
EMAIL = "passepartout@travelers.com"
CUSTOMER_ID = "cust-0001-passepartout"


def row_of(page: str, pk: int) -> str:
    """The changelist row of one object (found by its action checkbox)."""
    [row] = [row for row in result_rows(page).split("<tr")[1:] if f'name="_selected_action" value="{pk}"' in row]
    return row


def listed_ids(page: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'name="_selected_action" value="(\d+)"', page)]


def cell(row: str, field: str) -> str:
    return re.search(rf'<t[dh] class="field-{field}[^"]*">(.*?)</t[dh]>', row, re.S).group(1)


def readonly_value(page: str, field: str) -> str:
    return page.split(f"field-{field}")[1].split('<div class="readonly">')[1].split("</div>\n")[0]


def offered_actions(page: str) -> list[str]:
    if 'name="action"' not in page:
        return []
    select = page.split('<select name="action"')[1].split("</select>")[0]
    return re.findall(r'<option value="([^"]+)"', select)


def member_of(group: str, username: str | None = None) -> Client:
    user = StaffUser.objects.create_user(username=username or group.lower(), password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def operator() -> Client:
    return member_of("Operators")


@pytest.fixture
def viewer() -> Client:
    return member_of("Viewers")


@pytest.fixture
def offline(audience, configuration):
    """Connections for the tests that send nothing (no AWS needed): the fixture's audience, or a new one by name."""

    def make(name: str | None = None, **settings) -> Connection:
        return connection_create(
            audience=audience if name is None else audience_create(internal_name=name),
            configuration=configuration,
            stream_name=f"{name or 'audience'}-stream",
            **settings,
        )

    return make


def alert_badge(page: str) -> str | None:
    """The count in the header's red badge, or None when the page has no badge."""
    match = re.search(r'id="alert-badge".*?<span class="badge badge-bad">(\d+)</span>', page, re.S)
    return match.group(1) if match else None


def second_connection(make_connection, name: str, **settings) -> Connection:
    return make_connection(audience=audience_create(internal_name=name), stream_name=f"{name}-stream", **settings)


def fail_once_oversized(connection: Connection, audience: Audience) -> Delivery:
    """user-0's identities grow over Firehose's 1,000 KiB record limit: its resync record fails for good, user-1's is
    delivered (as in tests/integrations/test_delivery.py)."""
    members(audience, 2)
    User.objects.filter(external_id="user-0").update(identities={"CustomerId": "x" * (1000 * 1024)})
    connection_resync(connection=connection)
    Delivery.objects.filter(kind=Delivery.Kind.CHANGE).update(status=Delivery.Status.DELIVERED)
    drain(connection)
    return Delivery.objects.get(connection=connection, status=Delivery.Status.FAILED)


# --- delivery failures: the attempts of a delivery ------------------------------------------------------------------


def test_a_delivery_that_failed_once_then_went_through_lists_both_attempts_in_the_log(
    admin_client, connection, audience, stream, monkeypatch
):
    members(audience, 2)
    calls: list[list[bytes]] = []
    with firehose_behaviour(monkeypatch, batch=fail_entries([{0}], calls)):
        drain(connection)
    assert customer_ids(stream.records()) == ["user-1", "user-0"]
    retried = Delivery.objects.get(connection=connection, user__external_id="user-0", kind=Delivery.Kind.CHANGE)
    straight = Delivery.objects.get(connection=connection, user__external_id="user-1", kind=Delivery.Kind.CHANGE)
    partial, delivered = DeliveryAttempt.objects.filter(connection=connection).order_by("pk")

    [failure] = DeliveryFailure.objects.all()
    assert (failure.delivery_id, failure.attempt_id) == (retried.pk, partial.pk)
    assert failure.error == "InternalFailure: Internal service failure."
    assert retried.status == Delivery.Status.DELIVERED and retried.last_attempt_id == delivered.pk

    page = admin_client.get(url("integrations_delivery_changelist")).text

    attempts = re.findall(r"<li>(.*?)</li>", cell(row_of(page, retried.pk), "attempt_list"), re.S)
    assert len(attempts) == 2
    assert re.search(r"\b2 records\b", attempts[0]) and 'badge-bad">failed</span>' in attempts[0]
    assert "InternalFailure: Internal service failure." in attempts[0]
    assert f"{partial.duration_ms} ms" in attempts[0]
    assert re.search(r"\b1 record(?!s)", attempts[1]) and 'badge-ok">delivered</span>' in attempts[1]
    assert "InternalFailure" not in attempts[1]
    [only] = re.findall(r"<li>(.*?)</li>", cell(row_of(page, straight.pk), "attempt_list"), re.S)
    assert re.search(r"\b2 records\b", only) and 'badge-warn">partially failed</span>' in only


def test_a_failed_request_writes_a_failure_for_every_record_it_carried(connection, audience, stream, monkeypatch):
    members(audience, 3)
    calls: list[int] = []
    with firehose_behaviour(monkeypatch, batch=throttle_first(1, calls)):
        drain(connection)

    [throttled, _] = DeliveryAttempt.objects.filter(connection=connection).order_by("pk")
    failures = DeliveryFailure.objects.filter(attempt=throttled)
    assert sorted(failures.values_list("delivery_id", flat=True)) == sorted(
        Delivery.objects.filter(connection=connection).values_list("pk", flat=True)
    )
    assert all("ServiceUnavailableException" in failure.error for failure in failures)
    assert customer_ids(stream.records()) == ["user-0", "user-1", "user-2"]


# --- alerts: samples, auto-resolve, reopening, hourly counts --------------------------------------------------------


def test_a_partial_failure_raises_an_alert_with_a_masked_sample_that_the_next_clean_drain_resolves(
    admin_client, connection, audience, stream, monkeypatch
):
    apply(
        audience,
        join("p.fogg138", CustomerId="cust-0000-phileas", Email="phileas@travelers.com"),
        join("passepartout", CustomerId=CUSTOMER_ID, Email=EMAIL),
        join("aouda", CustomerId="cust-0002-aouda"),
    )
    calls: list[list[bytes]] = []
    # passepartout's entry fails, then its resend fails whole: the drain backs off with the alert open.
    with firehose_behaviour(monkeypatch, batch=fail_entries([{1}, {0}], calls)):
        connection_drain(connection.pk, 0)
    alert = SystemAlert.objects.get(connection=connection)
    assert alert.type == SystemAlert.Type.INTERNAL_SERVER_ERROR and alert.is_open and alert.count == 2

    sample = json.loads(alert.sample_record)
    assert set(sample["UserIdentities"]) == {"CustomerId", "Email"}
    assert sample["UserIdentities"]["Email"].startswith("pa") and set(sample["UserIdentities"]["Email"][2:]) == {"*"}
    assert sample["IsMember"] is True and sample["AudienceName"] == "LowEngagement"
    assert EMAIL not in alert.sample_record and CUSTOMER_ID not in alert.sample_record
    drill_down = admin_client.get(
        url("integrations_systemalert_changelist") + f"?connection__id__exact={connection.pk}"
    )
    assert "UserIdentities" in drill_down.text and "Email" in drill_down.text
    assert EMAIL not in drill_down.text and CUSTOMER_ID not in drill_down.text
    detail = admin_client.get(url("integrations_systemalert_change", alert.pk)).text
    assert "pa************" in readonly_value(detail, "sample_record_pretty") and EMAIL not in detail

    drain(connection)

    assert sorted(customer_ids(stream.records())) == sorted(["cust-0000-phileas", CUSTOMER_ID, "cust-0002-aouda"])
    alert.refresh_from_db()
    assert not alert.is_open and alert.resolved_at is not None and alert.acknowledged is False
    assert alert.count == 2
    assert 'badge-ok">resolved</span>' in row_of(
        admin_client.get(url("integrations_systemalert_changelist")).text, alert.pk
    )


def test_a_partial_failure_resent_at_once_resolves_its_alert_in_the_same_drain(
    connection, audience, stream, monkeypatch
):
    members(audience, 3)
    calls: list[list[bytes]] = []
    with firehose_behaviour(monkeypatch, batch=fail_entries([{1}], calls)):
        drain(connection)

    alert = SystemAlert.objects.get(connection=connection)
    assert alert.type == SystemAlert.Type.INTERNAL_SERVER_ERROR
    assert alert.resolved_at is not None and not alert.is_open


def test_an_alert_raised_after_the_first_clean_batch_of_a_drain_resolves_once_the_connection_delivers_again(
    connection, audience, stream, monkeypatch
):
    members(audience, 502)
    calls: list[list[bytes]] = []
    # A full batch goes through, then one entry of the next fails and is resent at once, delivered.
    with firehose_behaviour(monkeypatch, batch=fail_entries([set(), {0}], calls)):
        drain(connection)
    assert [len(call) for call in calls] == [500, 2, 1]
    assert SystemAlert.objects.get(connection=connection).type == SystemAlert.Type.INTERNAL_SERVER_ERROR

    apply(audience, join("later", CustomerId="later"))
    drain(connection)  # and the connection keeps delivering

    assert len(stream.records()) == 503
    alert = SystemAlert.objects.get(connection=connection)
    assert alert.resolved_at is not None and not alert.is_open


def test_record_too_large_stays_open_after_deliveries_that_resolve_a_stream_alert(connection, audience, stream):
    alert_raise(connection=connection, type=SystemAlert.Type.INTERNAL_SERVER_ERROR, message="InternalFailure")

    fail_once_oversized(connection, audience)

    assert customer_ids(stream.records()) == ["user-1"]
    too_large = SystemAlert.objects.get(connection=connection, type=SystemAlert.Type.RECORD_TOO_LARGE)
    server_error = SystemAlert.objects.get(connection=connection, type=SystemAlert.Type.INTERNAL_SERVER_ERROR)
    assert server_error.resolved_at is not None
    assert too_large.is_open and too_large.resolved_at is None

    apply(audience, join("later", CustomerId="later"))
    drain(connection)

    assert customer_ids(stream.records()) == ["user-1", "later"]
    too_large.refresh_from_db()
    assert too_large.is_open


def test_the_alert_of_a_faulted_connection_resolves_once_it_is_resumed_and_delivers(
    connection, audience, stream, monkeypatch
):
    members(audience, 2)
    with override_settings(FIREHOSE_RETRY_LIMIT=1, FIREHOSE_BACKOFF_BASE_SECONDS=0.02):
        with firehose_behaviour(monkeypatch, batch=throttle_first(100, [])):
            drain(connection)
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED
    gave_up = SystemAlert.objects.get(connection=connection, type=SystemAlert.Type.RETRY_LIMIT_EXCEEDED)
    assert gave_up.is_open and json.loads(gave_up.sample_record)["UserIdentities"] == {"CustomerId": "us****"}

    connection_resume(connection=connection)
    drain(connection)

    assert customer_ids(stream.records()) == ["user-0", "user-1"]
    assert not SystemAlert.objects.filter(connection=connection, resolved_at__isnull=True).exists()


def test_delivering_again_resolves_only_the_alerts_about_reaching_the_stream(quiet_connection):
    connection = quiet_connection
    for alert_type in SystemAlert.Type.values:
        alert_raise(connection=connection, type=alert_type, message=alert_type)

    resolved = alerts_resolve_on_delivery(connection_id=connection.pk)

    assert resolved == len(RESOLVED_BY_DELIVERY) == 7
    still_open = SystemAlert.objects.filter(connection=connection, resolved_at__isnull=True)
    assert set(still_open.values_list("type", flat=True)) == {
        SystemAlert.Type.RECORD_TOO_LARGE,
        SystemAlert.Type.BATCH_NOT_PERMITTED,
    }


def test_a_new_occurrence_reopens_a_resolved_or_acknowledged_alert(quiet_connection):
    connection = quiet_connection
    alert_raise(connection=connection, type=SystemAlert.Type.STREAM_NOT_FOUND, message="gone")
    alerts_resolve_on_delivery(connection_id=connection.pk)
    alert = SystemAlert.objects.get()
    assert not alert.is_open

    alert_raise(connection=connection, type=SystemAlert.Type.STREAM_NOT_FOUND, message="gone again")

    alert.refresh_from_db()
    assert alert.is_open and alert.resolved_at is None and alert.count == 2 and alert.last_message == "gone again"
    SystemAlert.objects.filter(pk=alert.pk).update(acknowledged=True, acknowledged_at=timezone.now())

    alert_raise(connection=connection, type=SystemAlert.Type.STREAM_NOT_FOUND, message="and again")

    alert.refresh_from_db()
    assert alert.is_open and alert.acknowledged is False and alert.acknowledged_at is None and alert.count == 3


def test_occurrences_are_counted_by_the_hour(quiet_connection):
    connection = quiet_connection
    alert_raise(connection=connection, type=SystemAlert.Type.ACCESS_DENIED, message="denied")
    alert = SystemAlert.objects.get()
    earlier = hour_of(timezone.now()) - timedelta(hours=2)
    AlertHourlyCount.objects.filter(alert=alert).update(hour=earlier)  # as if it happened two hours ago

    alert_raise(connection=connection, type=SystemAlert.Type.ACCESS_DENIED, message="denied")
    alert_raise(connection=connection, type=SystemAlert.Type.ACCESS_DENIED, message="denied")

    alert.refresh_from_db()
    counts = dict(AlertHourlyCount.objects.filter(alert=alert).values_list("hour", "count"))
    assert counts == {earlier: 1, hour_of(alert.last_seen): 2}
    assert alert.count == 3


# --- System Alerts: ranking by window and drill-down -----------------------------------------------------------------


def occurrences(connection: Connection, alert_type: str, by_hours_ago: dict[int, int]) -> SystemAlert:
    """An alert with the given number of occurrences so many hours ago (hourly counts written as test data)."""
    alert_raise(connection=connection, type=alert_type, message=f"{alert_type} on {connection.stream_name}")
    alert = SystemAlert.objects.get(connection=connection, type=alert_type)
    AlertHourlyCount.objects.filter(alert=alert).delete()
    now = hour_of(timezone.now())
    for hours_ago, count in by_hours_ago.items():
        AlertHourlyCount.objects.create(alert=alert, hour=now - timedelta(hours=hours_ago), count=count)
    SystemAlert.objects.filter(pk=alert.pk).update(count=sum(by_hours_ago.values()))
    return alert


@pytest.fixture
def ranked(offline) -> dict[str, Connection]:
    """Busy now: 5 occurrences this hour. Noisy: 3 this hour, 20 three days ago. Old: 40 ten days ago."""
    busy, noisy, old = offline("busy"), offline("noisy"), offline("old")
    occurrences(busy, SystemAlert.Type.INTERNAL_SERVER_ERROR, {0: 5})
    occurrences(noisy, SystemAlert.Type.ACCESS_DENIED, {0: 2, 72: 20})
    occurrences(noisy, SystemAlert.Type.STREAM_NOT_FOUND, {0: 1})
    occurrences(old, SystemAlert.Type.STREAM_NOT_ACTIVE, {240: 40})
    return {"busy": busy, "noisy": noisy, "old": old}


def ranking_ids(page: str) -> list[int]:
    table = page.split('id="alert-ranking"')[1].split("</table>")[0]
    return [int(pk) for pk in re.findall(r'<tr data-connection-id="(\d+)"', table)]


def test_the_ranking_orders_connections_by_their_occurrences_in_the_window(ranked):
    busy, noisy = ranked["busy"], ranked["noisy"]
    now = timezone.now()

    last_hour = alert_ranking(since=now - timedelta(hours=1))
    last_week = alert_ranking(since=now - timedelta(days=7))

    assert [(row["connection"].pk, row["occurrences"]) for row in last_hour] == [(busy.pk, 5), (noisy.pk, 3)]
    assert [(row["connection"].pk, row["occurrences"]) for row in last_week] == [(noisy.pk, 23), (busy.pk, 5)]
    assert [row["open"] for row in last_week] == [2, 1]


def test_the_system_alerts_page_ranks_connections_for_the_chosen_window(admin_client, ranked):
    busy, noisy = ranked["busy"], ranked["noisy"]
    changelist = url("integrations_systemalert_changelist")

    assert ranking_ids(admin_client.get(changelist + "?window=1h").text) == [busy.pk, noisy.pk]
    assert ranking_ids(admin_client.get(changelist + "?window=12h").text) == [busy.pk, noisy.pk]
    assert ranking_ids(admin_client.get(changelist + "?window=7d").text) == [noisy.pk, busy.pk]
    default = admin_client.get(changelist).text
    assert ranking_ids(default) == [busy.pk, noisy.pk] and "in the last 12 hours" in default
    week = admin_client.get(changelist + "?window=7d").text
    noisy_row = week.split(f'<tr data-connection-id="{noisy.pk}">')[1].split("</tr>")[0]
    assert "<td>23</td>" in noisy_row and '<span class="badge badge-bad">2</span>' in noisy_row


def test_the_drill_down_lists_a_connections_alerts_with_their_count_in_the_window(admin_client, ranked):
    noisy = ranked["noisy"]
    drill_down = url("integrations_systemalert_changelist") + f"?connection__id__exact={noisy.pk}"
    denied = SystemAlert.objects.get(connection=noisy, type=SystemAlert.Type.ACCESS_DENIED)
    not_found = SystemAlert.objects.get(connection=noisy, type=SystemAlert.Type.STREAM_NOT_FOUND)

    hour = admin_client.get(drill_down + "&window=1h").text
    week = admin_client.get(drill_down + "&window=7d").text

    assert sorted(listed_ids(hour)) == sorted([denied.pk, not_found.pk])
    assert 'id="alert-ranking"' not in hour
    assert f"Alerts of {noisy} in the last 1 hour" in hour
    assert cell(row_of(hour, denied.pk), "window_count") == "2"
    assert cell(row_of(hour, denied.pk), "count") == "22"
    assert cell(row_of(week, denied.pk), "window_count") == "22"
    assert cell(row_of(hour, not_found.pk), "window_count") == "1"
    assert "Access Denied on noisy-stream" in row_of(hour, denied.pk)  # the last message


# --- acknowledge all, and the header badge --------------------------------------------------------------------------


@pytest.fixture
def open_alerts(offline) -> dict[str, Connection]:
    connection, other = offline(), offline("other")
    alert_raise(connection=connection, type=SystemAlert.Type.ACCESS_DENIED, message="denied")
    alert_raise(connection=connection, type=SystemAlert.Type.RECORD_TOO_LARGE, message="too large")
    alert_raise(connection=other, type=SystemAlert.Type.STREAM_NOT_FOUND, message="gone")
    return {"first": connection, "other": other}


def test_the_header_badge_counts_open_alerts_on_every_admin_page(admin_client, open_alerts):
    for page in (
        url("index"),
        url("integrations_connection_changelist"),
        url("integrations_connection_change", open_alerts["first"].pk),
        url("integrations_delivery_changelist"),
        url("audiences_audience_changelist"),
    ):
        assert alert_badge(admin_client.get(page).text) == "3", page


def test_the_header_has_no_badge_without_open_alerts(admin_client, quiet_connection):
    connection = quiet_connection
    assert 'id="alert-badge"' not in admin_client.get(url("index")).text
    alert_raise(connection=connection, type=SystemAlert.Type.ACCESS_DENIED, message="denied")
    assert alert_badge(admin_client.get(url("index")).text) == "1"
    alerts_resolve_on_delivery(connection_id=connection.pk)

    assert 'id="alert-badge"' not in admin_client.get(url("index")).text


def test_the_header_badge_is_for_those_who_may_see_alerts(open_alerts):
    connections_only = StaffUser.objects.create_user(username="connections", is_staff=True)
    connections_only.user_permissions.add(
        Permission.objects.get(content_type__app_label="integrations", codename="view_connection")
    )
    client = Client()
    client.force_login(connections_only)

    page = client.get(url("integrations_connection_changelist"))

    assert page.status_code == 200 and 'id="alert-badge"' not in page.text


def test_acknowledge_all_closes_every_open_alert_and_the_badge_goes(admin_client, open_alerts):
    changelist = url("integrations_systemalert_changelist")
    assert 'id="acknowledge-all"' in admin_client.get(changelist).text

    response = admin_client.post(url("integrations_systemalert_acknowledge_all"))

    assert response.status_code == 302 and response.url == changelist
    assert messages_of(response) == ["Acknowledged 3 alerts."]
    assert not SystemAlert.objects.filter(acknowledged=False).exists()
    assert not SystemAlert.objects.filter(acknowledged_at__isnull=True).exists()
    page = admin_client.get(changelist).text
    assert 'id="alert-badge"' not in page and 'id="acknowledge-all"' not in page


def test_acknowledge_all_of_one_connection_leaves_the_others_open(admin_client, open_alerts):
    first, other = open_alerts["first"], open_alerts["other"]
    drill_down = url("integrations_systemalert_changelist") + f"?connection__id__exact={first.pk}"
    assert f'name="connection" value="{first.pk}"' in admin_client.get(drill_down).text

    response = admin_client.post(url("integrations_systemalert_acknowledge_all"), {"connection": str(first.pk)})

    assert response.status_code == 302 and response.url == drill_down
    assert messages_of(response) == ["Acknowledged 2 alerts."]
    assert set(SystemAlert.objects.filter(acknowledged=True).values_list("connection", flat=True)) == {first.pk}
    assert SystemAlert.objects.get(connection=other).is_open
    assert alert_badge(admin_client.get(url("index")).text) == "1"


def test_acknowledge_all_is_refused_to_viewers_and_needs_a_post(admin_client, viewer, operator, open_alerts):
    acknowledge_all = url("integrations_systemalert_acknowledge_all")

    assert viewer.post(acknowledge_all).status_code == 403
    assert viewer.post(acknowledge_all, {"connection": str(open_alerts["first"].pk)}).status_code == 403
    assert 'id="acknowledge-all"' not in viewer.get(url("integrations_systemalert_changelist")).text
    assert admin_client.get(acknowledge_all).status_code == 405
    assert SystemAlert.objects.filter(acknowledged=False).count() == 3

    assert operator.post(acknowledge_all).status_code == 302  # the Operators group may
    assert SystemAlert.objects.filter(acknowledged=False).count() == 0


# --- the connection page: health and resync progress -----------------------------------------------------------------


def test_the_connection_page_shows_status_backlog_chart_p95_and_the_iam_policy(
    admin_client, connection, audience, stream
):
    members(audience, 4)
    drain(connection)
    connection_pause(connection=connection)
    apply(audience, join("late", CustomerId="late"))

    page = admin_client.get(url("integrations_connection_change", connection.pk)).text

    assert re.search(r'<span id="connection-status"><span class="badge badge-muted">paused</span></span>', page)
    assert '<span id="connection-backlog">1</span> record pending' in page
    chart = re.search(r'<svg class="delivery-chart".*?</svg>', page, re.S).group(0)
    assert "4 delivered, 0 failed" in chart and len(re.findall(r'<rect class="delivered"', chart)) == 24
    assert " from the change&#x27;s acceptance to Firehose&#x27;s answer" in readonly_value(page, "latency_p95")
    policy = re.search(r'<pre id="iam-policy-json">(.*?)</pre>', page, re.S).group(1)
    assert json.loads(policy.replace("&quot;", '"'))["Statement"][0]["Action"] == [
        "firehose:DescribeDeliveryStream",
        "firehose:PutRecord",
        "firehose:PutRecordBatch",
    ]
    assert re.search(r'<button type="button" class="[^"]*copy-button[^"]*"\s+data-copy-target="iam-policy-json"', page)
    assert 'id="resync-progress" data-state="done"' in page  # the initial sync


def test_a_connection_without_deliveries_says_so_instead_of_a_p95(admin_client, offline):
    connection = offline(status="paused")

    page = admin_client.get(url("integrations_connection_change", connection.pk)).text

    assert readonly_value(page, "latency_p95") == "- (nothing delivered in the last 24 hours)"
    assert '<span id="connection-backlog">0</span> records pending' in page


def test_the_connection_page_script_and_the_admin_stylesheet_are_served(client, db):
    script = client.get("/static/integrations/connection.js")
    stylesheet = client.get("/static/integrations/admin.css")

    assert script.status_code == 200 and script["Content-Type"].startswith("text/javascript")
    code = b"".join(script.streaming_content)
    assert b"resync-progress" in code and b"data-copy-target" in code  # what the change page's markup hooks into
    assert stylesheet.status_code == 200 and stylesheet["Content-Type"].startswith("text/css")


def progress(client: Client, connection: Connection) -> dict:
    response = client.get(url("integrations_connection_progress", connection.pk))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    return response.json()


def test_the_resync_progress_goes_from_idle_to_running_to_done(admin_client, make_connection, audience, monkeypatch):
    members(audience, 3)
    connection = make_connection(status="paused")
    change = url("integrations_connection_change", connection.pk)

    idle = progress(admin_client, connection)
    assert (idle["state"], idle["queued"], idle["sent"], idle["remaining"]) == ("idle", 0, 0, 0)
    assert 'id="resync-progress" data-state="idle"' in admin_client.get(change).text
    confirmation = admin_client.get(url("integrations_connection_resync", connection.pk)).text
    assert '<strong id="resync-member-count">3</strong>' in confirmation

    connection_resync(connection=connection)

    asked = progress(admin_client, connection)
    assert (asked["state"], asked["total"], asked["queued"], asked["sent"], asked["remaining"]) == (
        "running", 3, 0, 0, 3,
    )  # fmt: skip
    assert "the connection is paused" in asked["text"] and asked["requested_at"]
    assert 'id="resync-progress" data-state="running"' in admin_client.get(change).text

    connection_resume(connection=connection)
    calls: list[list[bytes]] = []
    # Every call of this drain fails (the backoff is 50 ms here: the drain may get to try again before it ends).
    with firehose_behaviour(monkeypatch, batch=fail_entries([{0, 1, 2}] * 3, calls)):
        connection_drain(connection.pk, 0)  # queues the members, then the batch fails and backs off
    queued = progress(admin_client, connection)
    assert (queued["state"], queued["queued"], queued["sent"], queued["remaining"]) == ("running", 3, 0, 3)

    drain(connection)

    done = progress(admin_client, connection)
    assert (done["state"], done["queued"], done["sent"], done["remaining"]) == ("done", 3, 3, 0)
    assert done["text"] == "Done: 3 of 3 records sent."
    assert 'id="resync-progress" data-state="done"' in admin_client.get(change).text


def test_a_resync_record_failed_for_good_still_counts_as_settled(connection, audience, stream):
    fail_once_oversized(connection, audience)
    connection.refresh_from_db()

    assert resync_progress(connection) | {"text": "", "requested_at": ""} == {
        "state": "done", "total": 2, "queued": 2, "sent": 2, "remaining": 0, "text": "", "requested_at": "",
    }  # fmt: skip


def test_the_progress_endpoint_is_for_those_who_may_see_the_connection(viewer, quiet_connection):
    connection = quiet_connection
    outsider = StaffUser.objects.create_user(username="outsider", is_staff=True)
    client = Client()
    client.force_login(outsider)

    assert progress(viewer, connection)["state"] == "running"  # the initial sync, not sent yet
    assert client.get(url("integrations_connection_progress", connection.pk)).status_code == 404


# --- the delivery log: Retry failed ---------------------------------------------------------------------------------


def test_retry_failed_queues_a_failed_delivery_again_and_the_drain_sends_it(admin_client, connection, audience, stream):
    failed = fail_once_oversized(connection, audience)
    delivered = Delivery.objects.get(connection=connection, kind=Delivery.Kind.RESYNC, user__external_id="user-1")
    before = Delivery.objects.filter(pk=delivered.pk).values().get()
    assert customer_ids(stream.records()) == ["user-1"]
    User.objects.filter(external_id="user-0").update(identities={"CustomerId": "user-0"})  # the identity fixed

    response = run_action(admin_client, "integrations_delivery_changelist", "retry_failed", [failed, delivered])

    assert messages_of(response) == [
        "Queued 1 failed delivery again on 1 connection: they are sent after the current backlog "
        "(a paused or faulted connection sends them once resumed)."
    ]
    failed.refresh_from_db()
    assert failed.status == Delivery.Status.PENDING and failed.last_error == ""
    assert Delivery.objects.filter(pk=delivered.pk).values().get() == before
    assert DrainLease.objects.get(connection=connection, shard=failed.shard).claimed_through < failed.pk

    drain(connection)

    assert customer_ids(stream.records()) == ["user-1", "user-0"]
    failed.refresh_from_db()
    assert failed.status == Delivery.Status.DELIVERED
    assert Delivery.objects.filter(pk=delivered.pk).values().get() == before


def test_the_connection_page_offers_retry_failed_while_some_failed_and_it_sends_them(
    admin_client, connection, audience, stream
):
    change = url("integrations_connection_change", connection.pk)
    assert 'id="operate-retry-failed"' not in admin_client.get(change).text
    failed = fail_once_oversized(connection, audience)
    assert 'id="operate-retry-failed"' in admin_client.get(change).text
    User.objects.filter(external_id="user-0").update(identities={"CustomerId": "user-0"})  # the identity fixed

    response = admin_client.post(url("integrations_connection_retry_failed", connection.pk), follow=True)

    assert messages_of(response) == ["Queued 1 failed delivery again: they are sent after the current backlog."]
    assert 'id="operate-retry-failed"' not in response.text
    drain(connection)
    assert customer_ids(stream.records()) == ["user-1", "user-0"]
    failed.refresh_from_db()
    assert failed.status == Delivery.Status.DELIVERED


def test_retry_failed_on_deliveries_that_did_not_fail_changes_nothing(admin_client, connection, audience, stream):
    members(audience, 2)
    drain(connection)
    delivered = list(Delivery.objects.filter(connection=connection))
    before = list(Delivery.objects.order_by("pk").values())

    response = run_action(admin_client, "integrations_delivery_changelist", "retry_failed", delivered)

    assert messages_of(response) == ["None of the selected deliveries had failed: nothing to retry."]
    assert list(Delivery.objects.order_by("pk").values()) == before


def test_retry_failed_is_offered_to_operators_only(operator, viewer, connection, audience, stream):
    failed = fail_once_oversized(connection, audience)
    changelist = url("integrations_delivery_changelist")

    assert "retry_failed" in offered_actions(operator.get(changelist).text)
    assert "retry_failed" not in offered_actions(viewer.get(changelist).text)
    viewer_response = run_action(viewer, "integrations_delivery_changelist", "retry_failed", [failed])

    assert viewer_response.status_code == 200  # the list again: no action of theirs ran
    failed.refresh_from_db()
    assert failed.status == Delivery.Status.FAILED


# --- the delivery log: filters, attempts, capped count --------------------------------------------------------------


def test_the_delivery_log_filters_by_user_id_status_and_time(admin_client, quiet_connection, audience):
    connection = quiet_connection
    apply(
        audience, join("p.fogg138", CustomerId="a"), join("passepartout", CustomerId="b"), join("aouda", CustomerId="c")
    )
    fogg = Delivery.objects.get(user__external_id="p.fogg138")
    passepartout = Delivery.objects.get(user__external_id="passepartout")
    aouda = Delivery.objects.get(user__external_id="aouda")
    Delivery.objects.filter(pk=passepartout.pk).update(created_at=timezone.now() - timedelta(hours=3))
    Delivery.objects.filter(pk=aouda.pk).update(
        created_at=timezone.now() - timedelta(days=2), status=Delivery.Status.FAILED
    )
    changelist = url("integrations_delivery_changelist")

    def ids(query: str) -> list[int]:
        response = admin_client.get(changelist + query)
        assert response.status_code == 200
        return listed_ids(response.text)

    assert ids("?user_id=p.fogg138") == [fogg.pk]
    assert ids("?user_id=+passepartout+") == [passepartout.pk]  # spaces around a pasted id
    assert ids("?user_id=nobody") == []
    assert ids("?time=1h") == [fogg.pk]
    assert ids("?time=24h") == [passepartout.pk, fogg.pk]
    assert ids("?time=7d") == [aouda.pk, passepartout.pk, fogg.pk]
    assert ids("?status__exact=4") == [aouda.pk]
    assert ids("?status__exact=1&time=24h") == [passepartout.pk, fogg.pk]
    assert ids(f"?connection__id__exact={connection.pk}&user_id=aouda") == [aouda.pk]
    page = admin_client.get(changelist + "?status__exact=1&user_id=p.fogg138").text
    assert 'name="user_id" value="p.fogg138"' in page
    assert '<input type="hidden" name="status__exact" value="1">' in page  # the other filters ride along


def test_the_delivery_log_says_more_than_the_cap_instead_of_counting_every_row(
    admin_client, quiet_connection, audience, monkeypatch
):
    monkeypatch.setattr(CappedPaginator, "COUNT_CAP", 5)
    members(audience, 7)
    Delivery.objects.filter(user__external_id__in=["user-0", "user-1"]).update(status=Delivery.Status.FAILED)
    changelist = url("integrations_delivery_changelist")

    everything = admin_client.get(changelist).text
    failed = admin_client.get(changelist + "?status__exact=4").text

    assert "more than 5 deliveries" in everything and len(listed_ids(everything)) == 7
    assert "more than" not in failed.split('class="paginator"')[1] and "2 deliveries" in failed


@pytest.mark.skipif(db_connection.vendor != "postgresql", reason="the planner's estimate is PostgreSQL's")
def test_the_unfiltered_delivery_log_of_a_large_table_takes_the_planners_estimate_instead_of_counting(
    admin_client, quiet_connection, audience, monkeypatch
):
    monkeypatch.setattr(CappedPaginator, "ESTIMATE_FROM", 5)
    members(audience, 7)
    with db_connection.cursor() as cursor:
        cursor.execute("ANALYZE integrations_delivery")

    queries = capture(admin_client, url("integrations_delivery_changelist"))
    page = admin_client.get(url("integrations_delivery_changelist")).text

    assert "about 7 deliveries" in page.split('class="paginator"')[1]
    assert not [sql for sql in queries if COUNT_OVER_DELIVERIES.search(sql)]


# --- the admin index: health summary --------------------------------------------------------------------------------


def test_the_index_shows_the_last_24_hours_and_the_connections_that_need_a_look_faulted_first(
    admin_client, connection, make_connection, audience, stream, monkeypatch
):
    members(audience, 5)
    calls: list[list[bytes]] = []
    with firehose_behaviour(monkeypatch, batch=fail_entries([{3}], calls)):
        drain(connection)
    faulted = second_connection(make_connection, "faulted")
    Connection.objects.filter(pk=faulted.pk).update(status=Connection.Status.FAULTED)
    alerting = second_connection(make_connection, "alerting")
    alert_raise(connection=alerting, type=SystemAlert.Type.ACCESS_DENIED, message="denied")
    quiet = second_connection(make_connection, "quiet")

    page = admin_client.get(url("index")).text

    day = page.split('id="health-day">')[1].split("</td>")[0]
    assert "5 delivered</span>" in day and re.search(r'badge-warn"[^>]*>1 failed tries</span>', day)
    assert "(1 retried)" in day
    worst = page.split('id="health-worst"')[1].split("</table>")[0]
    listed = re.findall(r"/admin/integrations/connection/(\d+)/change/", worst)
    # Faulted first, then open alerts, then records failed in the last 24 hours (its alert resolved meanwhile).
    assert [int(pk) for pk in listed] == [faulted.pk, alerting.pk, connection.pk]
    assert not SystemAlert.objects.get(connection=connection).is_open
    assert quiet.pk not in [int(pk) for pk in listed]  # active, nothing failed, nothing pending


def test_the_index_without_deliveries_shows_zeros_and_nobody_to_look_at(admin_client, quiet_connection):
    page = admin_client.get(url("index")).text

    day = page.split('id="health-day">')[1].split("</td>")[0]
    assert "0 delivered</span>" in day and re.search(r'badge-muted"[^>]*>0 failed tries</span>', day)
    assert 'id="health-worst"' not in page


# --- query counts -----------------------------------------------------------------------------------------------------


COUNT_OVER_DELIVERIES = re.compile(r"COUNT\(.*\bintegrations_delivery\b", re.I | re.S)
# Django's own shapes of an uncapped count: `queryset.count()` and `Count(...)` over the deliveries' rows.
UNCAPPED_COUNT = re.compile(
    r'COUNT\([^)]*\)\s+AS\s+"?__count"?\s+FROM\s+"?integrations_delivery\b|COUNT\("?integrations_delivery"?\.', re.I
)


def capture(client: Client, page: str) -> list[str]:
    with CaptureQueriesContext(db_connection) as queries:
        response = client.get(page)
    assert response.status_code == 200, page
    return [query["sql"] for query in queries.captured_queries]


def operator_pages(connection: Connection) -> dict[str, str]:
    alerts = url("integrations_systemalert_changelist")
    deliveries = url("integrations_delivery_changelist")
    return {
        "index": url("index"),
        "connections": url("integrations_connection_changelist"),
        "connection": url("integrations_connection_change", connection.pk),
        "alert ranking": alerts + "?window=7d",
        "alert drill-down": alerts + f"?connection__id__exact={connection.pk}&window=24h",
        "delivery log": deliveries,
        "delivery log, filtered": deliveries + f"?connection__id__exact={connection.pk}&status__exact=2&time=24h",
        "delivery log, by user": deliveries + "?user_id=first-0",
        "delivery attempts": url("integrations_deliveryattempt_changelist"),
        "connection delete": url("integrations_connection_delete", connection.pk),
    }


def busy_connection(make_connection, name: str, member_count: int, alert_types: list[str]) -> Connection:
    connection = make_connection(audience=audience_create(internal_name=name))  # on the emulated stream
    members(connection.audience, member_count, prefix=name)
    for alert_type in alert_types:
        alert_raise(connection=connection, type=alert_type, message=f"{alert_type} on {name}")
    return connection


def test_the_operator_pages_take_the_same_queries_with_few_or_many_rows(
    admin_client, make_connection, stream, monkeypatch
):
    first = busy_connection(make_connection, "first", 3, [SystemAlert.Type.ACCESS_DENIED])
    busy_connection(make_connection, "second", 2, [SystemAlert.Type.STREAM_NOT_FOUND])
    calls: list[list[bytes]] = []
    with firehose_behaviour(monkeypatch, batch=fail_entries([{1}], calls)):
        drain(first)  # attempts, a failed try and stats to show
    assert DeliveryFailure.objects.count() == 1 and len(stream.records()) == 3
    pages = operator_pages(first)
    for page in pages.values():
        capture(admin_client, page)  # once first: the session and the content types are then loaded
    few = {name: capture(admin_client, page) for name, page in pages.items()}

    for n in range(6):
        busy_connection(
            make_connection, f"more{n}", 9, [SystemAlert.Type.ACCESS_DENIED, SystemAlert.Type.RECORD_TOO_LARGE]
        )
    members(first.audience, 9, prefix="first-more")
    with firehose_behaviour(monkeypatch, batch=fail_entries([{0, 4}, {1}], [])):
        drain(first)
    for alert_type in (SystemAlert.Type.RETRY_LIMIT_EXCEEDED, SystemAlert.Type.BATCH_NOT_PERMITTED):
        alert_raise(connection=first, type=alert_type, message="more")
    Connection.objects.filter(audience__internal_name="more0").update(status=Connection.Status.FAULTED)
    assert Connection.objects.count() == 8 and Delivery.objects.count() >= 60 and SystemAlert.objects.count() >= 14
    assert DeliveryFailure.objects.count() == 4 and len(stream.records()) == 12

    many = {name: capture(admin_client, page) for name, page in pages.items()}

    assert {name: len(queries) for name, queries in many.items()} == {name: len(q) for name, q in few.items()}
    for name, queries in many.items():
        for sql in queries:
            assert not UNCAPPED_COUNT.search(sql), (name, sql)
            if COUNT_OVER_DELIVERIES.search(sql):
                assert "LIMIT" in sql.upper(), (name, sql)


def test_the_delivery_attempts_use_time_filters_not_a_date_hierarchy(admin_client, connection, audience):
    members(audience, 3)
    drain(connection)
    with CaptureQueriesContext(db_connection) as queries:
        response = admin_client.get(url("integrations_deliveryattempt_changelist") + "?time=24h")
    assert response.status_code == 200 and response.context["cl"].date_hierarchy is None
    assert "last 24 hours" in response.text.lower(), response.text[response.text.find("changelist-filter") :][:1500]
    scans = [query["sql"] for query in queries.captured_queries if "integrations_deliveryattempt" in query["sql"]]
    assert not [sql for sql in scans if re.search(r"\bDISTINCT\b|\bMIN\(|\bMAX\(", sql)], scans


def test_a_deleted_connection_vanishes_at_once_and_its_rows_go_in_batches(admin_client, connection, audience):
    from integrations.retention import connections_purge_deleted

    members(audience, 7)
    drain(connection)
    alert_raise(connection=connection, type=SystemAlert.Type.ACCESS_DENIED, message="denied")
    other = connection_create(audience=audience, configuration=connection.configuration, stream_name="kept")
    admin_client.post(url("integrations_connection_delete", connection.pk), {"post": "yes"})

    assert list(Connection.objects.values_list("pk", flat=True)) == [other.pk]
    assert admin_client.get(url("integrations_connection_change", connection.pk)).status_code == 302
    # A drain that took its lease before the deletion may still record its batch: the row waits for it.
    DrainLease.objects.filter(connection=connection, shard=0).update(
        token="late", expires_at=timezone.now() + timedelta(minutes=1)
    )
    report = connections_purge_deleted(batch_size=3)
    assert report.finished and report.batches >= 3 and report.deliveries == 7
    assert not Delivery.objects.filter(connection_id=connection.pk).exists()
    assert not DeliveryAttempt.objects.filter(connection_id=connection.pk).exists()
    assert not SystemAlert.objects.filter(connection_id=connection.pk).exists()
    assert Connection.all_objects.filter(pk=connection.pk).exists()
    DrainLease.objects.filter(connection_id=connection.pk).update(token="", expires_at=None)
    assert connections_purge_deleted().finished and not Connection.all_objects.filter(pk=connection.pk).exists()
    assert Connection.objects.get(pk=other.pk).resync_running, "the other connection's initial sync goes on"
