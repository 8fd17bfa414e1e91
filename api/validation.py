"""Parsing of request bodies, and validation of membership changes: strict types, every error with its field path,
the whole batch or nothing.

Changes are validated by hand rather than by a DRF serializer because a request carries up to 10,000 of them and this
runs per change.
"""

import codecs
import json
import time
from typing import Any

from django.conf import settings
from rest_framework import exceptions, parsers

from audiences.attributes import Attributes, attribute_errors
from audiences.identities import Identities, identity_errors, text_error
from audiences.models import User
from audiences.services import ChangeIn, UserIn

from .errors import BodyTooLarge, Error, InvalidInput

MAX_USER_ID_LENGTH: int = User._meta.get_field("external_id").max_length
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01: anything later is a unit mistake (milliseconds) rather than a date
MAX_ERRORS = 100
CHANGE_KEYS = frozenset({"user_id", "is_member", "identities", "timestamp"})


class JSONParser(parsers.JSONParser):
    """JSON in UTF-8, read with a bound, where every malformed body is a ParseError (400) and never a 500."""

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        encoding = (parser_context or {}).get("encoding") or "utf-8"
        try:
            is_utf8 = codecs.lookup(encoding).name == "utf-8"
        except LookupError:
            is_utf8 = False
        if not is_utf8:
            raise exceptions.UnsupportedMediaType(media_type, detail="JSON must be encoded in UTF-8.")
        body = _read_at_most(stream, settings.API_MAX_BODY_BYTES)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise exceptions.ParseError(f"not UTF-8 (byte {exc.start + 1}).") from None
        try:
            return json.loads(text, parse_constant=_refuse_constant, parse_int=_parse_int)
        except ValueError as exc:
            raise exceptions.ParseError(f"{exc}.") from None
        except RecursionError:
            raise exceptions.ParseError("nested too deeply.") from None


def _read_at_most(stream, limit: int) -> bytes:
    """The whole stream, or BodyTooLarge as soon as it holds more than `limit` bytes."""
    chunks, size = [], 0
    while chunk := stream.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
    return b"".join(chunks)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _parse_int(digits: str) -> int:
    try:
        return int(digits)
    except ValueError:  # over Python's limit on the digits it converts (sys.get_int_max_str_digits)
        raise ValueError("A number has too many digits") from None


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
    latest = int(time.time()) + settings.CHANGE_MAX_FUTURE_SECONDS
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
        elif timestamp is not None and timestamp > latest:
            # A stamp in the future would make every later change of the user stale (contract section 14).
            errors.append(
                (
                    f"{path}.timestamp",
                    f"Must not be more than {settings.CHANGE_MAX_FUTURE_SECONDS} seconds ahead of the server's "
                    f"clock (it is {timestamp - latest + settings.CHANGE_MAX_FUTURE_SECONDS} seconds ahead).",
                )
            )
        if len(errors) >= MAX_ERRORS:
            break
        if not errors:
            parsed.append(ChangeIn(user_id=user_id, is_member=is_member, identities=identities, timestamp=timestamp))
    if errors:
        raise InvalidInput(errors[:MAX_ERRORS])
    return parsed


USER_KEYS = frozenset({"identities", "attributes"})


def parse_user_update(payload: Any, path: str = "") -> tuple[Identities | None, Attributes | None]:
    """`{"identities"?, "attributes"?}`, validated whole: every fault with its field path."""
    prefix = f"{path}." if path else ""
    if not isinstance(payload, dict):
        raise InvalidInput([(path or "body", "Must be an object with identities, attributes or both.")])
    errors: list[Error] = [(f"{prefix}{key}", "Unknown field.") for key in payload if key not in USER_KEYS]
    if not USER_KEYS & set(payload):
        errors.append((f"{prefix}identities", "Required: identities, attributes or both."))
    identities = payload.get("identities")
    if "identities" in payload:
        errors.extend(identity_errors(identities, f"{prefix}identities"))
    attributes = payload.get("attributes")
    if "attributes" in payload:
        errors.extend(attribute_errors(attributes, f"{prefix}attributes"))
    if errors:
        raise InvalidInput(errors[:MAX_ERRORS])
    return identities, attributes


def parse_users(payload: Any) -> list[UserIn]:
    """`{"users": [{"user_id", "identities"?, "attributes"?}]}`, validated whole like a batch of changes."""
    if not isinstance(payload, dict):
        raise InvalidInput([("body", "Must be an object with a 'users' list.")])
    errors: list[Error] = [(key, "Unknown field.") for key in payload if key != "users"]
    items = payload.get("users")
    if not isinstance(items, list):
        raise InvalidInput([*errors, ("users", "Required: a list of users.")])
    limit = settings.API_MAX_CHANGES_PER_REQUEST
    if not items:
        errors.append(("users", "Must hold at least one user."))
    if len(items) > limit:
        raise InvalidInput([*errors, ("users", f"At most {limit} users per request, got {len(items)}.")])
    parsed = []
    for index, item in enumerate(items):
        path = f"users[{index}]"
        if not isinstance(item, dict):
            errors.append((path, "Must be an object."))
            continue
        if "user_id" not in item:
            errors.append((f"{path}.user_id", "Required."))
        elif (message := user_id_error(item["user_id"])) is not None:
            errors.append((f"{path}.user_id", message))
        fields = {key: value for key, value in item.items() if key != "user_id"}
        try:
            identities, attributes = parse_user_update(fields, path) if fields else (None, None)
        except InvalidInput as invalid:
            errors.extend(invalid.errors)
            identities = attributes = None
        if len(errors) >= MAX_ERRORS:
            break
        if not errors:
            parsed.append(UserIn(user_id=item["user_id"], identities=identities, attributes=attributes))
    if errors:
        raise InvalidInput(errors[:MAX_ERRORS])
    return parsed
