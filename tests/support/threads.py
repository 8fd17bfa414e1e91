"""Work in other threads, each on its own database connection, for the tests of concurrent writers."""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.db import connection as db_connection
from django.db import transaction


def in_open_transaction(
    work: Callable[[], object], *, release_timeout: float = 20
) -> tuple[threading.Thread, threading.Event]:
    """Run `work` in a thread's transaction, and keep that transaction open until the returned event is set (or
    `release_timeout` seconds have passed)."""
    done, release = threading.Event(), threading.Event()

    def run() -> None:
        with transaction.atomic():
            work()
            done.set()
            release.wait(release_timeout)
        db_connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    assert done.wait(10)
    return thread, release


def in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            errors.append(error)
        finally:
            db_connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors
