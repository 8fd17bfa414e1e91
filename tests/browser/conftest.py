"""Browser tests: Debian's headless Chromium, driven by Playwright, against a whole deployment of the product
(tests/faults/cluster.py: its own PostgreSQL and Redis, gunicorn, a Celery worker and beat, the Firehose emulator).

SCREENSHOTS_DIR (default var/screenshots) receives a full-page screenshot of every step under steps/, and the pictures
of the README under their own names: `make screenshots` refreshes those in docs/screenshots.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from ..faults.cluster import Cluster, available, cluster_start
from ..support.localhost import BASE_DIR

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1366, "height": 768}  # a laptop screen

# Fast retries and a small retry budget, so that an endpoint that is gone faults its connection within seconds.
BROWSER_SETTINGS = {
    "FIREHOSE_CONNECT_TIMEOUT_SECONDS": "1",
    "FIREHOSE_READ_TIMEOUT_SECONDS": "3",
    "FIREHOSE_BACKOFF_BASE_SECONDS": "0.1",
    "FIREHOSE_BACKOFF_CAP_SECONDS": "0.5",
    "FIREHOSE_RETRY_LIMIT": "3",
    "DRAIN_LEASE_SECONDS": "5",
    "DRAIN_TIME_BUDGET_SECONDS": "5",
    "SWEEP_INTERVAL_SECONDS": "0.5",
    "DELIVERY_SHARDS": "2",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: headless Chromium against a whole deployment (tests/browser)")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not available():
        pytest.skip("the browser tests need PostgreSQL's server binaries and redis-server")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"the browser tests need Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    cluster = cluster_start(settings=BROWSER_SETTINGS)
    try:
        cluster.start_web()
        cluster.start_beat()
        cluster.start_workers(1, concurrency=2)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def browser(cluster: Cluster) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageProblems:
    """Console errors and uncaught exceptions of every page the test opened."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.page_errors.append(f"{page.url}: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            location = message.location.get("url") or "?"
            self.console_errors.append(f"{location}: {message.text}")


@pytest.fixture(scope="module")
def problems() -> PageProblems:
    return PageProblems()


@pytest.fixture(scope="module")
def page(browser: Browser, cluster: Cluster, problems: PageProblems) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT, base_url=f"http://127.0.0.1:{cluster.web_port}")
    context.set_default_timeout(15_000)
    page = context.new_page()
    problems.watch(page)
    try:
        yield page
    finally:
        context.close()


class Screenshots:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.taken: list[Path] = []
        self.count = 0

    def take(self, page: Page, step: str, *, readme: str | None = None) -> None:
        """A full-page screenshot of this step, numbered in order under steps/; `readme` also saves it as
        <readme>.png beside them, for the README."""
        self.count += 1
        name = re.sub(r"[^a-z0-9]+", "-", step.lower()).strip("-")
        targets = [self.directory / "steps" / f"{self.count:02d}-{name}.png"]
        if readme:
            targets.append(self.directory / f"{readme}.png")
        # Without focus: Chromium lays out again after a full-page screenshot when a focused field loses focus, so a
        # click that blurs a focused number input would move its target between mousedown and mouseup.
        page.evaluate("document.activeElement && document.activeElement.blur()")
        image = page.screenshot(full_page=True)
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(image)
            self.taken.append(target)


@pytest.fixture(scope="module")
def screenshots() -> Screenshots:
    directory = Path(os.environ.get("SCREENSHOTS_DIR") or BASE_DIR / "var" / "screenshots")
    if not directory.is_absolute():
        directory = BASE_DIR / directory
    shutil.rmtree(directory / "steps", ignore_errors=True)  # the steps of an earlier run
    return Screenshots(directory)
