"""The rule language of rule audiences (contract section 10): validation with the path of each fault, and two
evaluators that must agree, `rule_matches` (one user, in Python) and `rule_sql` (every user, in SQL, for PostgreSQL
and SQLite).

A leaf is false when its attribute is missing or holds a value of another type than its operator reads
(`not_exists` aside); every SQL leaf is written to be true or false, never NULL, so that `not` negates it exactly as
Python does. Numbers are compared as IEEE doubles on both sides, strings exactly (no collation, no case folding),
and dates as the Unix seconds kept in `User.attribute_times` (audiences.attributes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.db.models import BooleanField, Q
from django.db.models.expressions import RawSQL

from .attributes import KEY_PATTERN, attribute_time, is_finite_number
from .identities import IDENTITY_KEYS
from .models import Membership, User

MAX_DEPTH = 8  # groups, not leaves
MAX_LEAVES = 100
DAY_SECONDS = 86_400

EQUALITY = frozenset({"eq", "ne"})
MEMBERSHIP = frozenset({"in", "not_in"})
COMPARISON = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
TEXT = frozenset({"contains", "starts_with", "ends_with"})
PRESENCE = frozenset({"exists", "not_exists"})
DATES = frozenset({"before", "after"})
AGES = frozenset({"within_last_days", "more_than_days_ago"})
OPERATORS = EQUALITY | MEMBERSHIP | set(COMPARISON) | {"between"} | TEXT | PRESENCE | DATES | AGES

Errors = list[tuple[str, str]]


# --- validation -------------------------------------------------------------------------------------------------


def rule_errors(rule: Any, path: str = "rule") -> Errors:
    """Every fault of a rule, each with its path (`rule.all[2].op`); an empty list for a valid rule."""
    errors: Errors = []
    leaves = _check(rule, path, 1, errors)
    if leaves > MAX_LEAVES and not errors:
        errors.append((path, f"A rule holds at most {MAX_LEAVES} leaves, got {leaves}."))
    return errors


def _check(rule: Any, path: str, depth: int, errors: Errors) -> int:
    """Validate one node; returns the leaves under it."""
    if not isinstance(rule, dict):
        errors.append((path, "Must be an object: a group (all, any, not) or a leaf."))
        return 0
    groups = [key for key in ("all", "any", "not") if key in rule]
    if groups:
        if len(rule) != 1:
            errors.append((path, "A group holds exactly one of all, any or not, and nothing else."))
            return 0
        if depth > MAX_DEPTH:
            errors.append((path, f"A rule nests at most {MAX_DEPTH} groups."))
            return 0
        key = groups[0]
        if key == "not":
            return _check(rule["not"], f"{path}.not", depth + 1, errors)
        items = rule[key]
        if not isinstance(items, list) or not items:
            errors.append((f"{path}.{key}", "Must be a non-empty list of rules."))
            return 0
        return sum(_check(item, f"{path}.{key}[{index}]", depth + 1, errors) for index, item in enumerate(items))
    if "in_audience" in rule:
        unknown = [key for key in rule if key != "in_audience"]
        errors.extend((f"{path}.{key}", "Unknown field.") for key in unknown)
        audience_id = rule["in_audience"]
        if isinstance(audience_id, bool) or not isinstance(audience_id, int) or audience_id < 1:
            errors.append((f"{path}.in_audience", "Must be an audience id."))
        return 1
    if "identity" in rule:
        _check_identity(rule, path, errors)
        return 1
    if "attribute" in rule:
        _check_attribute(rule, path, errors)
        return 1
    errors.append((path, "Must be a group (all, any, not) or a leaf (attribute, identity, in_audience)."))
    return 0


def _check_identity(rule: dict, path: str, errors: Errors) -> None:
    errors.extend((f"{path}.{key}", "Unknown field.") for key in rule if key not in ("identity", "op"))
    if rule["identity"] not in IDENTITY_KEYS:
        errors.append((f"{path}.identity", f"Unknown identity key {rule['identity']!r}."))
    if rule.get("op") not in PRESENCE:
        errors.append((f"{path}.op", "An identity leaf's operator is exists or not_exists."))


def _check_attribute(rule: dict, path: str, errors: Errors) -> None:
    errors.extend((f"{path}.{key}", "Unknown field.") for key in rule if key not in ("attribute", "op", "value"))
    key = rule["attribute"]
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        errors.append((f"{path}.attribute", "Attribute names match ^[A-Za-z_][A-Za-z0-9_]{0,63}$."))
    op = rule.get("op")
    if "op" not in rule:
        errors.append((f"{path}.op", "Required."))
        return
    if not isinstance(op, str) or op not in OPERATORS:
        errors.append((f"{path}.op", f"Unknown operator {op!r}."))
        return
    if op in PRESENCE:
        if "value" in rule:
            errors.append((f"{path}.value", f"{op} takes no value."))
        return
    if "value" not in rule:
        errors.append((f"{path}.value", "Required."))
        return
    if (message := _value_error(op, rule["value"])) is not None:
        errors.append((f"{path}.value", message))


def _value_error(op: str, value: Any) -> str | None:
    if op in EQUALITY:
        ok = isinstance(value, str | bool) or is_finite_number(value)
        return None if ok else f"{op} compares with a string, a number or a boolean."
    if op in MEMBERSHIP:
        ok = isinstance(value, list) and value and all(isinstance(v, str) or is_finite_number(v) for v in value)
        return None if ok else f"{op} takes a non-empty list of strings or numbers."
    if op in COMPARISON:
        return None if is_finite_number(value) else f"{op} compares with a number."
    if op == "between":
        ok = isinstance(value, list) and len(value) == 2 and all(is_finite_number(v) for v in value)
        return None if ok else "between takes [low, high], two numbers."
    if op in TEXT:
        return None if isinstance(value, str) else f"{op} takes a string."
    if op in DATES:
        ok = attribute_time(value) is not None
        return None if ok else f"{op} takes an ISO 8601 date-time with a time zone (2026-11-30T12:00:00Z)."
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 100_000
    return None if ok else f"{op} takes a positive whole number of days."


def rule_audience_ids(rule: dict) -> set[int]:
    """The audiences a (valid) rule refers to."""
    return {leaf["in_audience"] for leaf in _leaves(rule) if "in_audience" in leaf}


def _leaves(rule: dict) -> Iterator[dict]:
    for key in ("all", "any"):
        if key in rule:
            for item in rule[key]:
                yield from _leaves(item)
            return
    if "not" in rule:
        yield from _leaves(rule["not"])
        return
    yield rule


# --- one user, in Python ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserFacts:
    """What a rule reads of a user."""

    attributes: dict[str, Any] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)
    audience_ids: frozenset[int] = frozenset()  # the audiences the user is a member of


def rule_matches(rule: dict, user: UserFacts, now: float) -> bool:
    """Whether a valid rule holds for the user at `now` (Unix seconds)."""
    if "all" in rule:
        return all(rule_matches(item, user, now) for item in rule["all"])
    if "any" in rule:
        return any(rule_matches(item, user, now) for item in rule["any"])
    if "not" in rule:
        return not rule_matches(rule["not"], user, now)
    if "in_audience" in rule:
        return rule["in_audience"] in user.audience_ids
    if "identity" in rule:
        return (rule["identity"] in user.identities) == (rule["op"] == "exists")
    return _attribute_matches(rule, user.attributes, now)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "other"


def _attribute_matches(rule: dict, attributes: dict[str, Any], now: float) -> bool:
    op, key = rule["op"], rule["attribute"]
    if op in PRESENCE:
        return (key in attributes) == (op == "exists")
    if key not in attributes:
        return False
    found, wanted = attributes[key], rule.get("value")
    kind = _kind(found)
    if op in EQUALITY:
        if kind != _kind(wanted):
            return False
        same = float(found) == float(wanted) if kind == "number" else found == wanted
        return same == (op == "eq")
    if op in MEMBERSHIP:
        of_kind = [v for v in wanted if _kind(v) == kind]
        if kind not in ("string", "number") or not of_kind:
            return False
        inside = float(found) in {float(v) for v in of_kind} if kind == "number" else found in of_kind
        return inside == (op == "in")
    if op in COMPARISON or op == "between":
        return kind == "number" and _compare(op, float(found), wanted)
    if op in TEXT:
        if op == "contains" and kind == "array":
            return wanted in found
        if kind != "string":
            return False
        if op == "contains":
            return wanted in found
        return found.startswith(wanted) if op == "starts_with" else found.endswith(wanted)
    seconds = attribute_time(found)
    if seconds is None:
        return False
    if op == "before":
        return seconds < attribute_time(wanted)
    if op == "after":
        return seconds > attribute_time(wanted)
    threshold = now - wanted * DAY_SECONDS
    return threshold <= seconds <= now if op == "within_last_days" else seconds < threshold


def _compare(op: str, found: float, wanted: Any) -> bool:
    if op == "between":
        return float(wanted[0]) <= found <= float(wanted[1])
    return {
        "lt": found < float(wanted),
        "lte": found <= float(wanted),
        "gt": found > float(wanted),
        "gte": found >= float(wanted),
    }[op]


# --- every user, in SQL -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    """Where the compiled SQL reads a user: its table (or alias) and the memberships table."""

    users: str
    memberships: str


def rule_sql(rule: dict, *, vendor: str, now: float, columns: Columns) -> tuple[str, list[Any]]:
    """The rule as a boolean SQL expression over one row of the users table, never NULL; with its parameters."""
    dialect = _POSTGRESQL if vendor == "postgresql" else _SQLITE
    params: list[Any] = []
    return _sql(rule, dialect, now, columns, params), params


def _sql(rule: dict, d: _Dialect, now: float, c: Columns, params: list[Any]) -> str:
    if "all" in rule:
        return "(" + " AND ".join(_sql(item, d, now, c, params) for item in rule["all"]) + ")"
    if "any" in rule:
        return "(" + " OR ".join(_sql(item, d, now, c, params) for item in rule["any"]) + ")"
    if "not" in rule:
        return f"(NOT {_sql(rule['not'], d, now, c, params)})"
    if "in_audience" in rule:
        params.append(rule["in_audience"])
        return (
            f"EXISTS (SELECT 1 FROM {c.memberships} m WHERE m.user_id = {c.users}.id AND m.audience_id = %s"
            f" AND m.is_member = {d.true})"
        )
    if "identity" in rule:
        params.append(rule["identity"])
        present = d.identity_present(f"{c.users}.identities")
        return present if rule["op"] == "exists" else f"(NOT {present})"
    return _attribute_sql(rule, d, now, f"{c.users}.attributes", f"{c.users}.attribute_times", params)


def _attribute_sql(rule: dict, d: _Dialect, now: float, column: str, times: str, params: list[Any]) -> str:
    op, key, wanted = rule["op"], rule["attribute"], rule.get("value")
    kind = d.kind(column, key)
    if op in PRESENCE:
        return f"({kind} IS {'NOT ' if op == 'exists' else ''}NULL)"
    text, number = d.text(column, key), d.number(column, key)
    if op in EQUALITY:
        wanted_kind = _kind(wanted)
        if wanted_kind == "boolean":  # ne: the other boolean
            return f"COALESCE({d.boolean_is(column, key, wanted == (op == 'eq'))}, {d.false})"
        value, param = (number, float(wanted)) if wanted_kind == "number" else (text, wanted)
        params.append(param)
        comparison = "=" if op == "eq" else "<>"
        return f"COALESCE(({kind} = '{wanted_kind}' AND {value} {comparison} %s), {d.false})"
    if op in MEMBERSHIP:
        parts = []
        for wanted_kind, value in (("string", text), ("number", number)):
            of_kind = [v if wanted_kind == "string" else float(v) for v in wanted if _kind(v) == wanted_kind]
            if of_kind:
                params.extend(of_kind)
                inside = f"{value} {'IN' if op == 'in' else 'NOT IN'} ({', '.join(['%s'] * len(of_kind))})"
                parts.append(f"({kind} = '{wanted_kind}' AND {inside})")
        return f"COALESCE(({' OR '.join(parts)}), {d.false})"
    if op in COMPARISON:
        params.append(float(wanted))
        return f"COALESCE(({kind} = 'number' AND {number} {COMPARISON[op]} %s), {d.false})"
    if op == "between":
        params.extend([float(wanted[0]), float(wanted[1])])
        return f"COALESCE(({kind} = 'number' AND {number} >= %s AND {number} <= %s), {d.false})"
    if op in TEXT:
        if op == "contains":
            string = f"({kind} = 'string' AND {d.contains(text, wanted, params)})"
            array = f"({kind} = 'array' AND {d.array_holds(column, key, wanted, params)})"
            return f"COALESCE(({string} OR {array}), {d.false})"
        test = d.prefix(text, wanted, params) if op == "starts_with" else d.suffix(text, wanted, params)
        return f"COALESCE(({kind} = 'string' AND {test}), {d.false})"
    seconds = d.number(times, key)
    if op in DATES:
        params.append(attribute_time(wanted))
        return f"COALESCE(({seconds} {'<' if op == 'before' else '>'} %s), {d.false})"
    threshold = now - wanted * DAY_SECONDS
    if op == "within_last_days":
        params.extend([threshold, now])
        return f"COALESCE(({seconds} >= %s AND {seconds} <= %s), {d.false})"
    params.append(threshold)
    return f"COALESCE(({seconds} < %s), {d.false})"


# Attribute names match KEY_PATTERN (checked before compiling), so they are written into the SQL as they are. Every
# method that takes a value appends it to `params` once for each placeholder it writes.


class _Dialect:
    true = "true"
    false = "false"

    def kind(self, column: str, key: str) -> str:
        """The JSON type of the attribute, named as Python's `_kind` names it; NULL when it is missing."""
        return f"jsonb_typeof({column} -> '{key}')"

    def text(self, column: str, key: str) -> str:
        return f"({column} ->> '{key}')"

    def number(self, column: str, key: str) -> str:
        return f"(CASE WHEN jsonb_typeof({column} -> '{key}') = 'number' THEN ({column} ->> '{key}')::float8 END)"

    def boolean_is(self, column: str, key: str, value: bool) -> str:
        return f"(({column} -> '{key}') = '{'true' if value else 'false'}'::jsonb)"

    def array_holds(self, column: str, key: str, value: str, params: list) -> str:
        params.append(value)
        return f"(({column} -> '{key}') @> jsonb_build_array(%s::text))"

    def contains(self, text: str, value: str, params: list) -> str:
        params.append(value)
        return f"(strpos({text}, %s) > 0)"

    def prefix(self, text: str, value: str, params: list) -> str:
        params.extend([value, value])
        return f"(left({text}, length(%s)) = %s)"

    def suffix(self, text: str, value: str, params: list) -> str:
        params.extend([value, value])
        return f"(right({text}, length(%s)) = %s)"

    def identity_present(self, column: str) -> str:
        """The identity named by the next parameter is set (identities are kept as JSON text)."""
        return f"((({column})::jsonb -> %s) IS NOT NULL)"


class _SQLiteDialect(_Dialect):
    true = "1"
    false = "0"

    def kind(self, column: str, key: str) -> str:
        found = f"json_type({column}, '$.{key}')"
        return (
            f"(CASE {found} WHEN 'text' THEN 'string' WHEN 'integer' THEN 'number' WHEN 'real' THEN 'number'"
            f" WHEN 'true' THEN 'boolean' WHEN 'false' THEN 'boolean' ELSE {found} END)"
        )

    def text(self, column: str, key: str) -> str:
        return f"json_extract({column}, '$.{key}')"

    def number(self, column: str, key: str) -> str:
        return (
            f"(CASE WHEN json_type({column}, '$.{key}') IN ('integer', 'real')"
            f" THEN CAST(json_extract({column}, '$.{key}') AS REAL) END)"
        )

    def boolean_is(self, column: str, key: str, value: bool) -> str:
        return f"(json_type({column}, '$.{key}') = '{'true' if value else 'false'}')"

    def array_holds(self, column: str, key: str, value: str, params: list) -> str:
        params.append(value)
        return (
            f"EXISTS (SELECT 1 FROM json_each({column}, '$.{key}') AS item"
            f" WHERE item.type = 'text' AND item.value = %s)"
        )

    def contains(self, text: str, value: str, params: list) -> str:
        params.append(value)
        return f"(instr({text}, %s) > 0)"

    def prefix(self, text: str, value: str, params: list) -> str:
        params.extend([value, value])
        return f"(substr({text}, 1, length(%s)) = %s)"

    def suffix(self, text: str, value: str, params: list) -> str:
        params.extend([value, value, value])
        return f"(length({text}) >= length(%s) AND substr({text}, length({text}) - length(%s) + 1) = %s)"

    def identity_present(self, column: str) -> str:
        return f"(json_type({column}, '$.' || json_quote(%s)) IS NOT NULL)"


_POSTGRESQL = _Dialect()
_SQLITE = _SQLiteDialect()


def rule_q(rule: dict, now: float) -> Q:
    """The rule as a filter of `User.objects` on the database in use."""
    columns = Columns(users=User._meta.db_table, memberships=Membership._meta.db_table)
    sql, params = rule_sql(rule, vendor=connection.vendor, now=now, columns=columns)
    return Q(RawSQL(sql, params, output_field=BooleanField()))
