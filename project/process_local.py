"""What one process remembers for a few seconds: that a dependency was found down (`Pause`), or a value it read or
computed recently (`Recent`). Each is an object that keeps its own state, so that no module rebinds a global; tests
start afresh with `clear()`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Pause:
    """Skip something for `seconds` after it failed, so that requests do not each wait for it again."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._until = 0.0

    def active(self) -> bool:
        return time.monotonic() < self._until

    def start(self) -> None:
        self._until = time.monotonic() + self.seconds

    def clear(self) -> None:
        self._until = 0.0


class Recent(Generic[T]):
    """A value computed at most once per `max_age()` seconds in this process, one computation at a time."""

    def __init__(self, max_age: Callable[[], float]) -> None:
        self.max_age = max_age
        self._lock = threading.Lock()
        self._value: tuple[float, T] | None = None

    def get(self, compute: Callable[[], T]) -> T:
        with self._lock:
            if self._value is not None and time.monotonic() - self._value[0] < self.max_age():
                return self._value[1]
            value = compute()
            self._value = (time.monotonic(), value)
            return value

    def clear(self) -> None:
        with self._lock:
            self._value = None
