"""An operator's day in the admin, in headless Chromium, against a whole deployment: log in, add a configuration and
a connection, test it, watch changes arrive, see the connection fault when the endpoint goes away (status badge,
alert badge in the header, the System Alerts ranking), resume it, and resync it while its progress updates in place.

The steps run in order on one page and one deployment; a step whose prerequisite failed is skipped. Every step leaves
a screenshot (tests/browser/conftest.py); the last one checks that no page logged an error.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from playwright.sync_api import Page, expect

from ..faults.cluster import Cluster
from .conftest import PageProblems, Screenshots

pytestmark = pytest.mark.browser

USERNAME, PASSWORD = "operator", "a-long-browser-password"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYBROWSERSECRET"
ACCESS_KEY_ID = "AKIAIOSFODNN7BROWSER"
STREAM = "travellers-stream"
MEMBERS = 500  # fed before the connection exists: its initial sync sends them
RECORDS_PER_SECOND = 100  # the connection's rate limit: a resync of the members takes a few seconds to send


@dataclass
class Day:
    """What the steps found out, for the steps after them."""

    audience_id: int = 0
    configuration_id: int = 0
    connection_id: int = 0
    delivered: int = 0  # records the connection must have delivered once its backlog is empty
    faulted: bool = False
    resumed: bool = False

    def need(self, **facts: object) -> None:
        missing = [name for name, value in facts.items() if not value]
        if missing:
            pytest.skip(f"an earlier step failed: no {', '.join(missing)}")


@pytest.fixture(scope="module")
def day() -> Day:
    return Day()


# --- helpers ----------------------------------------------------------------------------------------------------


def user_id(number: int) -> str:
    return f"traveller-{number:04d}"


def join(number: int) -> dict:
    return {
        "user_id": user_id(number),
        "is_member": True,
        "identities": {"CustomerId": user_id(number), "Email": f"{user_id(number)}@travelers.com"},
    }


def leave(number: int) -> dict:
    return {"user_id": user_id(number), "is_member": False}


def ingest(cluster: Cluster, audience_id: int, changes: list[dict]) -> None:
    status, answer = cluster.api("POST", f"/audiences/{audience_id}/changes", {"changes": changes})
    assert status == 202, answer
    assert answer["accepted"] == len(changes), answer


def connection_url(day: Day) -> str:
    return f"/admin/integrations/connection/{day.connection_id}/change/"


def object_id(page: Page) -> int:
    match = re.search(r"/(\d+)/change/", page.url)
    assert match, f"not a change page: {page.url}"
    return int(match.group(1))


def backlog(page: Page) -> int:
    """The backlog shown on the connection's page."""
    return int(page.locator("#connection-backlog").inner_text().replace(",", ""))


def delivered(page: Page) -> int:
    """The records the connection delivered since it was created (the Delivery engine section, folded)."""
    return int((page.locator(".field-delivered .readonly").text_content() or "").strip().replace(",", ""))


def reload_until(page: Page, check: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Reload the page, as an operator would, until `check` holds."""
    deadline = time.monotonic() + timeout
    while True:
        page.reload()
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the page did not show {what} within {timeout:.0f} s")
        time.sleep(0.5)


def status_is(page: Page, status: str) -> bool:
    """Whether the status badge of the connection's page says `status` (active, paused or faulted)."""
    badge = page.locator("#connection-status")
    assert badge.count() == 1, "the connection's page has no status badge (#connection-status)"
    return badge.inner_text().strip().lower() == status


def expect_alert_badge(page: Page, count: int) -> None:
    """The header's red badge: the number of open System Alerts, linking to them; none without an open alert."""
    badge = page.locator("#alert-badge")
    if not count:
        expect(badge).to_have_count(0)
        return
    expect(badge).to_be_visible()
    expect(badge).to_have_text(re.compile(rf"^\D*\b{count}\b\D*$"))  # "3", or "System Alerts 3"
    expect(badge.locator("xpath=ancestor-or-self::a[1]")).to_have_attribute(
        "href", re.compile(r"^/admin/integrations/systemalert/")
    )


def open_alert_count(cluster: Cluster) -> int:
    status, alerts = cluster.api("GET", "/alerts?open=true")
    assert status == 200, alerts
    return len(alerts)


# --- the day ----------------------------------------------------------------------------------------------------


def test_01_log_in(page: Page, cluster: Cluster, screenshots: Screenshots):
    cluster.create_superuser(USERNAME, PASSWORD)
    page.goto("/admin/login/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    screenshots.take(page, "login")
    page.click("input[type=submit]")
    expect(page.locator("#health-summary")).to_be_visible()
    expect(page.locator("#user-tools")).to_contain_text(USERNAME)
    expect_alert_badge(page, 0)
    screenshots.take(page, "dashboard empty")


def test_02_audience_and_members_through_the_api(cluster: Cluster, day: Day):
    status, audience = cluster.api("POST", "/audiences", {"internal_name": "low_engagement", "external_name": "Low"})
    assert status == 201, audience
    day.audience_id = audience["id"]
    ingest(cluster, day.audience_id, [join(number) for number in range(MEMBERS)])
    status, audience = cluster.api("GET", f"/audiences/{day.audience_id}")
    assert audience["member_count"] == MEMBERS


def test_03_configuration_secret_never_shown(page: Page, cluster: Cluster, day: Day, screenshots: Screenshots):
    page.goto("/admin/integrations/configuration/add/")
    page.fill("#id_name", "Travel")
    page.fill("#id_access_key_id", "akia-not-an-access-key")
    page.fill("#id_secret_access_key", SECRET_ACCESS_KEY)
    page.fill("#id_endpoint_url", cluster.emulator.endpoint)
    page.click("input[name=_continue]")

    # Refused: the form comes back with the error, and without the secret.
    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator(".field-access_key_id .errorlist")).to_contain_text("upper-case letters and digits")
    assert SECRET_ACCESS_KEY not in page.content()
    expect(page.locator("#id_secret_access_key")).to_have_value("")
    screenshots.take(page, "configuration refused")

    page.fill("#id_access_key_id", ACCESS_KEY_ID)
    page.fill("#id_secret_access_key", SECRET_ACCESS_KEY)
    page.click("input[name=_continue]")
    expect(page.locator(".messagelist .success")).to_contain_text("was added successfully")
    day.configuration_id = object_id(page)
    assert SECRET_ACCESS_KEY not in page.content()
    expect(page.locator("#id_secret_access_key")).to_have_value("")
    expect(page.locator("#id_endpoint_url")).to_have_value(cluster.emulator.endpoint)
    screenshots.take(page, "configuration")

    page.reload()
    assert SECRET_ACCESS_KEY not in page.content()


def test_04_connection(page: Page, day: Day, screenshots: Screenshots):
    day.need(audience=day.audience_id, configuration=day.configuration_id)
    page.goto("/admin/integrations/connection/add/")
    page.select_option("#id_audience", value=str(day.audience_id))
    page.select_option("#id_configuration", value=str(day.configuration_id))
    page.fill("#id_stream_name", STREAM)
    page.select_option("#id_region", value="us-east-1")
    page.fill("#id_max_records_per_second", str(RECORDS_PER_SECOND))
    screenshots.take(page, "connection form")
    page.click("input[name=_continue]")
    expect(page.locator(".messagelist .success")).to_contain_text("was added successfully")
    day.connection_id = object_id(page)
    day.delivered = MEMBERS  # the initial sync
    expect(page.locator("#operate-test")).to_be_visible()


def test_05_test_connection(page: Page, day: Day, screenshots: Screenshots):
    day.need(connection=day.connection_id)
    page.goto(connection_url(day))
    page.click("#operate-test")
    success = page.locator(".messagelist .success")
    expect(success).to_contain_text("ACTIVE")
    expect(success).to_contain_text(f"arn:aws:firehose:us-east-1:123456789012:deliverystream/{STREAM}")
    expect(page.locator(".field-stream_arn_text")).to_contain_text("arn:aws:firehose:")
    screenshots.take(page, "test connection")


def test_06_changes_delivered(page: Page, cluster: Cluster, day: Day, screenshots: Screenshots):
    day.need(connection=day.connection_id)
    changes = [leave(number) for number in range(50)] + [join(number) for number in range(MEMBERS, MEMBERS + 50)]
    ingest(cluster, day.audience_id, changes)
    day.delivered += len(changes)
    page.goto(connection_url(day))
    reload_until(
        page,
        lambda: backlog(page) == 0 and delivered(page) == day.delivered,
        timeout=60,
        what=f"{day.delivered} records delivered",
    )
    assert len(set(cluster.emulator.records(STREAM))) == day.delivered
    last_24_hours = page.locator(".field-last_24_hours")
    expect(last_24_hours).to_contain_text(f"{day.delivered} delivered")
    expect(last_24_hours.locator("svg.delivery-chart")).to_be_visible()
    screenshots.take(page, "changes delivered")


def test_07_endpoint_gone_faults_the_connection(page: Page, cluster: Cluster, day: Day, screenshots: Screenshots):
    day.need(connection=day.connection_id)
    cluster.emulator.behave(refuse=True)  # connections refused: every request fails, past the retry budget
    ingest(cluster, day.audience_id, [join(number) for number in range(50)])
    day.delivered += 50
    page.goto(connection_url(day))
    deadline = time.monotonic() + 60
    while cluster.api("GET", f"/connections/{day.connection_id}")[1]["status"] != "faulted":
        assert time.monotonic() < deadline, "the connection did not fault"
        time.sleep(0.5)
    day.faulted = True
    alerts = open_alert_count(cluster)
    assert alerts >= 1

    # The change page: the status badge, the error, the backlog kept; the header's alert badge.
    reload_until(page, lambda: status_is(page, "faulted"), timeout=15, what="the faulted status badge")
    assert backlog(page) == 50
    # A request on a kept-alive connection finds it closed, a new one is refused: either is the endpoint gone.
    expect(page.locator(".field-last_error_text")).to_contain_text(
        re.compile("EndpointConnectionError|ConnectionClosedError")
    )
    expect_alert_badge(page, alerts)
    screenshots.take(page, "connection faulted")

    # The badge leads to the System Alerts, which rank the connection over the window.
    page.locator("#alert-badge").click()
    expect(page).to_have_url(re.compile(r"/admin/integrations/systemalert/"))
    page.goto("/admin/integrations/systemalert/?window=12h")
    expect(page.locator(f'#alert-ranking tr[data-connection-id="{day.connection_id}"]')).to_be_visible()
    expect_alert_badge(page, alerts)
    screenshots.take(page, "system alerts", readme="system-alerts")

    # The admin index sums it up, the faulted connection first among those that need a look.
    page.goto("/admin/")
    expect(page.locator("#health-connections")).to_contain_text("1 faulted")
    expect(page.locator("#health-alerts")).to_contain_text(str(alerts))
    expect(page.locator("#health-worst")).to_contain_text(STREAM)
    expect_alert_badge(page, alerts)
    screenshots.take(page, "dashboard faulted", readme="dashboard")


def test_08_resume_sends_the_backlog(page: Page, cluster: Cluster, day: Day, screenshots: Screenshots):
    day.need(faulted=day.faulted)
    cluster.emulator.behave()
    page.goto(connection_url(day))
    page.click("#operate-resume")
    expect(page.locator(".messagelist .success")).to_contain_text("Resumed 1 connection")
    day.resumed = True
    reload_until(
        page,
        lambda: backlog(page) == 0 and delivered(page) == day.delivered and status_is(page, "active"),
        timeout=60,
        what=f"an active connection with an empty backlog and {day.delivered} records delivered",
    )
    assert len(set(cluster.emulator.records(STREAM))) == day.delivered
    expect_alert_badge(page, open_alert_count(cluster))  # delivering again resolved the alert about the endpoint
    screenshots.take(page, "resumed")


def test_09_resync_progress_updates_in_place(page: Page, cluster: Cluster, day: Day, screenshots: Screenshots):
    day.need(resumed=day.resumed)
    members = cluster.api("GET", f"/audiences/{day.audience_id}")[1]["member_count"]
    assert members == MEMBERS + 50
    page.goto(connection_url(day))
    page.click("#operate-resync")
    expect(page).to_have_url(re.compile(rf"/connection/{day.connection_id}/resync/$"))
    expect(page.locator("#resync-member-count")).to_have_text(str(members))
    screenshots.take(page, "resync confirmation")

    page.locator("#content form [type=submit]").click()
    expect(page).to_have_url(re.compile(rf"{connection_url(day)}$"))
    expect(page.locator(".messagelist .success")).to_contain_text("Resync started")
    page.evaluate("window.__marker = 1")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: frame == page.main_frame and navigations.append(frame.url))

    progress = page.locator("#resync-progress")
    expect(progress).to_be_visible()
    assert progress.get_attribute("data-state") == "running"  # sending takes seconds at the connection's rate limit
    for word in ("queued", "sent", "remaining"):
        expect(progress).to_contain_text(word, ignore_case=True)
    screenshots.take(page, "resync running")
    expect(progress).to_have_attribute("data-state", "done", timeout=60_000)
    assert page.evaluate("window.__marker") == 1, "the page was reloaded"
    assert navigations == []
    expect(progress).to_contain_text(str(members))
    screenshots.take(page, "resync done", readme="connection")

    day.delivered += members
    deadline = time.monotonic() + 30
    while len(cluster.emulator.records(STREAM)) < day.delivered:
        assert time.monotonic() < deadline, "the resync did not reach the stream"
        time.sleep(0.5)


def test_10_dashboard_and_no_page_errors(
    page: Page, cluster: Cluster, day: Day, problems: PageProblems, screenshots: Screenshots
):
    page.goto("/admin/")
    expect(page.locator("#health-summary")).to_be_visible()
    alerts = open_alert_count(cluster)
    expect(page.locator("#health-alerts")).to_contain_text(str(alerts))
    expect_alert_badge(page, alerts)
    expect(page.locator("#health-connections")).to_contain_text("1 active")
    screenshots.take(page, "dashboard end of day")
    assert problems.page_errors == []
    assert problems.console_errors == []
