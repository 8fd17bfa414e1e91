"""The rule language (contract section 10): its validation, and the agreement of its two evaluators.

Hypothesis draws rules and users (missing attributes, wrong types, lists, dates around now, `not`, identities and
audience leaves); every user is evaluated in Python (`rule_matches`) and by the SQL the rule compiles to, on SQLite
(Python's sqlite3) and, when the tests run there, on PostgreSQL, over the same rows. They must agree on every user.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection as db_connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audiences.attributes import attribute_errors, attribute_times
from audiences.models import User
from audiences.rules import Columns, UserFacts, rule_errors, rule_matches, rule_q, rule_sql

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()
KEYS = ["a", "b", "missing"]  # few names, so that leaves and users meet often
WORDS = ["pro", "free", "Pro", "pr", "o", "", "é", "pro plan"]


def _iso(days: float) -> str:
    moment = datetime.fromtimestamp(NOW, UTC) + timedelta(days=days)
    return moment.isoformat().replace("+00:00", "Z")


dates = st.floats(min_value=-60, max_value=10, allow_nan=False).map(lambda days: _iso(round(days, 3)))
numbers = st.one_of(st.integers(-5, 5), st.floats(-5, 5, allow_nan=False, allow_infinity=False), st.just(2**53 + 1))
values = st.one_of(st.sampled_from(WORDS), numbers, st.booleans(), st.lists(st.sampled_from(WORDS), max_size=3), dates)
attributes = st.dictionaries(st.sampled_from(KEYS[:-1]), values, max_size=2)
scalars = st.one_of(st.sampled_from(WORDS), numbers, st.booleans())


def _attribute_leaf(op: str) -> st.SearchStrategy:
    key = st.sampled_from(KEYS)
    if op in ("exists", "not_exists"):
        return st.builds(lambda k: {"attribute": k, "op": op}, key)
    value = {
        "eq": scalars,
        "ne": scalars,
        "in": st.lists(st.one_of(st.sampled_from(WORDS), numbers), min_size=1, max_size=3),
        "not_in": st.lists(st.one_of(st.sampled_from(WORDS), numbers), min_size=1, max_size=3),
        "lt": numbers,
        "lte": numbers,
        "gt": numbers,
        "gte": numbers,
        "between": st.lists(numbers, min_size=2, max_size=2),
        "contains": st.sampled_from(WORDS),
        "starts_with": st.sampled_from(WORDS),
        "ends_with": st.sampled_from(WORDS),
        "before": dates,
        "after": dates,
        "within_last_days": st.integers(1, 40),
        "more_than_days_ago": st.integers(1, 40),
    }[op]
    return st.builds(lambda k, v: {"attribute": k, "op": op, "value": v}, key, value)


OPS = [
    "eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "between", "contains", "starts_with", "ends_with",
    "exists", "not_exists", "before", "after", "within_last_days", "more_than_days_ago",
]  # fmt: skip
leaves = st.one_of(
    st.sampled_from(OPS).flatmap(_attribute_leaf),
    st.builds(lambda k, op: {"identity": k, "op": op}, st.sampled_from(["Email", "CustomerId"]),
              st.sampled_from(["exists", "not_exists"])),
    st.builds(lambda audience: {"in_audience": audience}, st.sampled_from([1, 2])),
)  # fmt: skip
rules = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.builds(lambda items: {"all": items}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda items: {"any": items}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda item: {"not": item}, children),
    ),
    max_leaves=8,
)
users = st.lists(
    st.builds(
        UserFacts,
        attributes=attributes,
        identities=st.dictionaries(st.sampled_from(["Email", "CustomerId"]), st.just("x"), max_size=2),
        audience_ids=st.frozensets(st.sampled_from([1, 2])),
    ),
    min_size=1,
    max_size=10,
)


def _near(value) -> list:
    """Values a user may hold that sit on, or just beside, what a leaf compares with."""
    if isinstance(value, bool):
        return [True, False]
    if isinstance(value, int | float):
        return [value, value + 0.5, value - 0.5, value + 1, int(value), str(value)]
    if isinstance(value, list):
        return [item for v in value for item in _near(v)] + [value, [str(v) for v in value]]
    if isinstance(value, str) and value.endswith("Z"):
        return [value, value.replace("Z", "+01:00"), value[:-1] + "-01:00"]
    if isinstance(value, str):
        return [value, value + "x", "x" + value, value[:1], value.upper(), [value]]
    return []


def _users_for(leaf: dict) -> st.SearchStrategy:
    near = _near(leaf.get("value"))
    held = st.one_of(values, st.sampled_from(near)) if near else values
    return st.lists(
        st.builds(UserFacts, attributes=st.dictionaries(st.sampled_from(KEYS[:-1]), held, max_size=2)),
        min_size=1,
        max_size=10,
    )


def _rows_sql(facts: list[UserFacts], cast: bool) -> tuple[str, list]:
    """The users and their memberships as VALUES lists, under the names the compiled SQL reads."""
    jsonb = "::jsonb" if cast else ""
    params: list = []
    user_rows = []
    for number, user in enumerate(facts, start=1):
        user_rows.append(f"(%s, %s{jsonb}, %s{jsonb}, %s)")
        params += [number, json.dumps(user.attributes), json.dumps(attribute_times(user.attributes))]
        params.append(json.dumps(user.identities))
    member_rows = ["(0, 0, false)" if cast else "(0, 0, 0)"]
    for number, user in enumerate(facts, start=1):
        member_rows += [f"({number}, {audience}, {'true' if cast else '1'})" for audience in sorted(user.audience_ids)]
    sql = (
        f"WITH members(user_id, audience_id, is_member) AS (VALUES {', '.join(member_rows)}),"
        f" people(id, attributes, attribute_times, identities) AS (VALUES {', '.join(user_rows)})"
    )
    return sql, params


COLUMNS = Columns(users="people", memberships="members")


def _sql_answers(rule: dict, facts: list[UserFacts], vendor: str) -> list[bool]:
    condition, condition_params = rule_sql(rule, vendor=vendor, now=NOW, columns=COLUMNS)
    rows, rows_params = _rows_sql(facts, cast=vendor == "postgresql")
    sql = f"{rows} SELECT id, {condition} FROM people ORDER BY id"
    if vendor == "sqlite":
        with sqlite3.connect(":memory:") as database:
            found = database.execute(sql.replace("%s", "?"), rows_params + condition_params).fetchall()
    else:
        with db_connection.cursor() as cursor:
            cursor.execute(sql, rows_params + condition_params)
            found = cursor.fetchall()
    return [bool(answer) for _, answer in found]


def _agree(rule: dict, facts: list[UserFacts], vendor: str) -> None:
    assert rule_errors(rule) == []
    expected = [rule_matches(rule, user, NOW) for user in facts]
    assert _sql_answers(rule, facts, vendor) == expected


def _on_postgresql() -> None:
    if db_connection.vendor != "postgresql":
        pytest.skip("the tests run on SQLite: the SQLite evaluator is checked by the tests above")


AGREEMENT = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


LEAF_AGREEMENT = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("op", OPS)
@LEAF_AGREEMENT
@given(data=st.data())
def test_the_python_and_sqlite_evaluators_agree_on_each_operator(op, data):
    leaf = data.draw(_attribute_leaf(op))
    _agree(leaf, data.draw(_users_for(leaf)), "sqlite")


@AGREEMENT
@given(rule=leaves, facts=users)
def test_the_python_and_sqlite_evaluators_agree_on_each_leaf(rule, facts):
    _agree(rule, facts, "sqlite")


@AGREEMENT
@given(rule=rules, facts=users)
def test_the_python_and_sqlite_evaluators_agree_on_nested_rules(rule, facts):
    _agree(rule, facts, "sqlite")


@pytest.mark.django_db
@pytest.mark.parametrize("op", OPS)
@LEAF_AGREEMENT
@given(data=st.data())
def test_the_python_and_postgresql_evaluators_agree_on_each_operator(op, data):
    _on_postgresql()
    leaf = data.draw(_attribute_leaf(op))
    _agree(leaf, data.draw(_users_for(leaf)), "postgresql")


@pytest.mark.django_db
@AGREEMENT
@given(rule=leaves, facts=users)
def test_the_python_and_postgresql_evaluators_agree_on_each_leaf(rule, facts):
    _on_postgresql()
    _agree(rule, facts, "postgresql")


@pytest.mark.django_db
@AGREEMENT
@given(rule=rules, facts=users)
def test_the_python_and_postgresql_evaluators_agree_on_nested_rules(rule, facts):
    _on_postgresql()
    _agree(rule, facts, "postgresql")


@pytest.mark.django_db
def test_a_compiled_rule_filters_the_users_table():
    for external_id, values in [
        ("pro-recent", {"plan": "pro", "last_seen": _iso(-3)}),
        ("pro-old", {"plan": "pro", "last_seen": _iso(-45)}),
        ("free-recent", {"plan": "free", "last_seen": _iso(-1)}),
        ("nothing", {}),
    ]:
        User.objects.create(external_id=external_id, attributes=values, attribute_times=attribute_times(values))
    rule = {
        "all": [
            {"attribute": "plan", "op": "eq", "value": "pro"},
            {"attribute": "last_seen", "op": "within_last_days", "value": 30},
        ]
    }

    assert list(User.objects.filter(rule_q(rule, NOW)).values_list("external_id", flat=True)) == ["pro-recent"]
    assert sorted(User.objects.exclude(rule_q(rule, NOW)).values_list("external_id", flat=True)) == [
        "free-recent",
        "nothing",
        "pro-old",
    ]


@pytest.mark.parametrize(
    ("rule", "errors"),
    [
        ({"all": [{"attribute": "a", "op": "eq", "value": 1}, {}, {"attribute": "b", "op": "equals", "value": 1}]},
         [("rule.all[1]", "Must be a group (all, any, not) or a leaf (attribute, identity, in_audience)."),
          ("rule.all[2].op", "Unknown operator 'equals'.")]),
        ({"any": []}, [("rule.any", "Must be a non-empty list of rules.")]),
        ({"not": {"attribute": "a", "op": "exists", "value": 1}}, [("rule.not.value", "exists takes no value.")]),
        ({"attribute": "a", "op": "in", "value": []},
         [("rule.value", "in takes a non-empty list of strings or numbers.")]),
        ({"attribute": "a", "op": "gt", "value": True}, [("rule.value", "gt compares with a number.")]),
        ({"attribute": "a", "op": "between", "value": [1]},
         [("rule.value", "between takes [low, high], two numbers.")]),
        ({"attribute": "a", "op": "before", "value": "2026-11-30"},
         [("rule.value", "before takes an ISO 8601 date-time with a time zone (2026-11-30T12:00:00Z).")]),
        ({"attribute": "a", "op": "within_last_days", "value": 0},
         [("rule.value", "within_last_days takes a positive whole number of days.")]),
        ({"attribute": "9a", "op": "exists"},
         [("rule.attribute", "Attribute names match ^[A-Za-z_][A-Za-z0-9_]{0,63}$.")]),
        ({"identity": "Phone", "op": "exists"}, [("rule.identity", "Unknown identity key 'Phone'.")]),
        ({"identity": "Email", "op": "eq"}, [("rule.op", "An identity leaf's operator is exists or not_exists.")]),
        ({"in_audience": "7"}, [("rule.in_audience", "Must be an audience id.")]),
        ({"all": [{"attribute": "a", "op": "exists"}], "any": []},
         [("rule", "A group holds exactly one of all, any or not, and nothing else.")]),
    ],
)  # fmt: skip
def test_a_bad_rule_is_refused_with_the_path_of_each_fault(rule, errors):
    assert rule_errors(rule) == errors


def test_groups_nest_at_most_eight_deep_and_hold_at_most_a_hundred_leaves():
    leaf = {"attribute": "a", "op": "exists"}
    deep = leaf
    for _ in range(8):
        deep = {"not": deep}
    assert rule_errors(deep) == []
    assert rule_errors({"not": deep}) == [("rule" + ".not" * 8, "A rule nests at most 8 groups.")]
    assert rule_errors({"any": [leaf] * 100}) == []
    assert rule_errors({"any": [leaf] * 101}) == [("rule", "A rule holds at most 100 leaves, got 101.")]


def test_a_leaf_on_a_missing_attribute_or_another_type_is_false_and_its_not_is_true():
    user = UserFacts(attributes={"plan": "pro", "score": 3, "flag": True, "tags": ["a", "b"]})
    for leaf in [
        {"attribute": "missing", "op": "eq", "value": "pro"},
        {"attribute": "plan", "op": "gt", "value": 1},
        {"attribute": "flag", "op": "eq", "value": 1},
        {"attribute": "score", "op": "in", "value": ["3"]},
        {"attribute": "tags", "op": "starts_with", "value": "a"},
        {"attribute": "plan", "op": "before", "value": "2026-01-01T00:00:00Z"},
    ]:
        assert rule_matches(leaf, user, NOW) is False, leaf
        assert rule_matches({"not": leaf}, user, NOW) is True, leaf
    assert rule_matches({"attribute": "tags", "op": "contains", "value": "b"}, user, NOW)
    assert rule_matches({"attribute": "missing", "op": "not_exists"}, user, NOW)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"plan": "x" * 1025}, "Must be at most 1024 characters."),
        ({"score": 10**400}, "Must be a finite number."),
        ({"tags": ["a", 1]}, "A list holds strings only."),
        ({"tags": ["a"] * 101}, "A list holds at most 100 strings."),
        ({"nested": {"a": 1}}, "Must be a string, a number, a boolean, a list of strings, or null to remove it."),
    ],
)
def test_a_bad_attribute_is_refused_with_its_path(value, message):
    assert attribute_errors(value, "users[3].attributes") == [(f"users[3].attributes.{next(iter(value))}", message)]
