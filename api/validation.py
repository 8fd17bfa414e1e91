"""Validation of membership changes: strict types, every error with its field path, the whole batch or nothing.

Hand-written rather than a DRF serializer because a request carries up to 10,000 changes and this runs per change.
"""

from typing import Any

from django.conf import settings

from audiences.identities import Identities, identity_errors
from audiences.services import ChangeIn

from .errors import Error, InvalidInput

MAX_USER_ID_LENGTH = 256
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01: anything later is a unit mistake (milliseconds) rather than a date
MAX_ERRORS = 100
CHANGE_KEYS = frozenset({"user_id", "is_member", "identities", "timestamp"})


def text_error(value: Any, *, max_length: int, allow_empty: bool = False) -> str | None:
    """The message for a bad string, or None: type, length, NUL characters and unpaired surrogates."""
    if not isinstance(value, str):
        return "Must be a string."
    if not value and not allow_empty:
        return "Must not be empty."
    if len(value) > max_length:
        return f"Must be at most {max_length} characters."
    if "\x00" in value:
        return "Must not contain NUL characters."
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "Must be valid Unicode (no unpaired surrogates)."
    return None


def identities_or_raise(value: Any, path: str = "identities") -> Identities:
    errors = identity_errors(value, path)
    if errors:
        raise InvalidInput(errors)
    return value


def user_id_error(value: Any) -> str | None:
    return text_error(value, max_length=MAX_USER_ID_LENGTH)


def parse_changes(payload: Any) -> list[ChangeIn]:
    errors: list[Error] = []
    if not isinstance(payload, dict):
        raise InvalidInput([("body", "Must be an object with a 'changes' list.")])
    errors.extend((key, "Unknown field.") for key in payload if key != "changes")
    items = payload.get("changes")
    if not isinstance(items, list):
        errors.append(("changes", "Required: a list of changes."))
        raise InvalidInput(errors)
    limit = settings.API_MAX_CHANGES_PER_REQUEST
    if not items:
        errors.append(("changes", "Must hold at least one change."))
    if len(items) > limit:
        errors.append(("changes", f"At most {limit} changes per request, got {len(items)}."))
        raise InvalidInput(errors)
    parsed = []
    for index, item in enumerate(items):
        path = f"changes[{index}]"
        if not isinstance(item, dict):
            errors.append((path, "Must be an object."))
            continue
        errors.extend((f"{path}.{key}", "Unknown field.") for key in item if key not in CHANGE_KEYS)
        user_id = item.get("user_id")
        if "user_id" not in item:
            errors.append((f"{path}.user_id", "Required."))
        elif (message := user_id_error(user_id)) is not None:
            errors.append((f"{path}.user_id", message))
        is_member = item.get("is_member")
        if not isinstance(is_member, bool):
            errors.append((f"{path}.is_member", "Required: true or false."))
        identities = item.get("identities")
        if identities is not None:
            errors.extend(identity_errors(identities, f"{path}.identities"))
        timestamp = item.get("timestamp")
        if timestamp is not None and (
            isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp <= MAX_TIMESTAMP
        ):
            errors.append((f"{path}.timestamp", f"Must be whole Unix seconds between 0 and {MAX_TIMESTAMP}."))
        if len(errors) >= MAX_ERRORS:
            break
        if not errors:
            parsed.append(ChangeIn(user_id=user_id, is_member=is_member, identities=identities, timestamp=timestamp))
    if errors:
        raise InvalidInput(errors[:MAX_ERRORS])
    return parsed
