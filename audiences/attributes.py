"""User attributes (contract section 9): typed values that only decide rule audiences' membership, never sent.

A value is a string (at most 1,024 characters), a finite number, a boolean, or a list of at most 100 strings. A
string that reads as an ISO 8601 date-time with a time zone is also kept as Unix seconds in `User.attribute_times`,
so that the date operators of the rules compare numbers, in Python and in SQL alike (`attribute_time`).
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from .identities import text_error

Attributes = dict[str, Any]

KEY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_ATTRIBUTES = 200
MAX_TEXT_LENGTH = 1024
MAX_LIST_LENGTH = 100
# The date-times the rules read: a date, a time and an offset or Z (2026-11-30T12:00:00Z).
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})")


def attribute_time(value: Any) -> float | None:
    """Unix seconds of an ISO 8601 date-time with a time zone; None for anything else."""
    if not isinstance(value, str) or not _DATE_TIME.fullmatch(value):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


def attribute_times(attributes: Attributes) -> dict[str, float]:
    return {key: seconds for key, value in attributes.items() if (seconds := attribute_time(value)) is not None}


def is_finite_number(value: Any) -> bool:
    """A JSON number a double holds (booleans are not numbers): the rules compare numbers as doubles."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _text_error(value: str) -> str | None:
    return text_error(value, max_length=MAX_TEXT_LENGTH, allow_empty=True)


def attribute_value_error(value: Any) -> str | None:
    """The message for a value that cannot be stored, or None (a null is valid: it removes the attribute)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return None if is_finite_number(value) else "Must be a finite number."
    if isinstance(value, str):
        return _text_error(value)
    if isinstance(value, list):
        if len(value) > MAX_LIST_LENGTH:
            return f"A list holds at most {MAX_LIST_LENGTH} strings."
        for item in value:
            if not isinstance(item, str):
                return "A list holds strings only."
            if (message := _text_error(item)) is not None:
                return f"Each string of the list: {message[0].lower()}{message[1:]}"
        return None
    return "Must be a string, a number, a boolean, a list of strings, or null to remove it."


def attribute_errors(value: Any, path: str = "attributes") -> list[tuple[str, str]]:
    """Every fault of an `attributes` object, each with its field path (`users[3].attributes.plan`)."""
    if not isinstance(value, dict):
        return [(path, "Must be an object of attribute name to value.")]
    errors = []
    for key, item in value.items():
        if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
            errors.append((f"{path}.{key}", "Attribute names match ^[A-Za-z_][A-Za-z0-9_]{0,63}$."))
        elif (message := attribute_value_error(item)) is not None:
            errors.append((f"{path}.{key}", message))
    return errors


def attributes_merged(current: Attributes, changes: Attributes) -> Attributes:
    """`changes` merged into `current`: a key set to null is removed."""
    merged = dict(current)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def attributes_count_error(attributes: Attributes, path: str = "attributes") -> list[tuple[str, str]]:
    if len(attributes) > MAX_ATTRIBUTES:
        return [(path, f"A user holds at most {MAX_ATTRIBUTES} attributes ({len(attributes)} after this change).")]
    return []
