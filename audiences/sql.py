"""The hand-written SQL of the audiences app, each statement beside its ORM twin where other databases need one.

PostgreSQL gets the statements of a batch written by hand, their rows in one JSON parameter, where the ORM would
build, compile and quote thousands of model instances; `FOR KEY SHARE`, which the ORM does not offer; and a user id
prefix search on the pattern operators of its index. SQLite, the embedded default of `make run`, runs one writing
transaction at a time and gets the ORM's statements. Table names come from the models' `_meta`.

A batch's rows are read here, applied in memory by `audiences.services`, and written here.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from django.db import connection
from django.utils import timezone

from project.db import is_postgresql

from .identities import Identities, identities_json
from .models import Audience, Membership, MembershipChange, User

# --- the rows of a batch ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class UserRow:
    pk: int
    external_id: str
    identities: Identities


@dataclass(slots=True)
class MembershipRow:
    audience_id: int
    user_id: int
    is_member: bool
    last_changed_timestamp: int


class ChangeRow(NamedTuple):
    """A change to save, with the user's identities after it (and before it, for an identity change)."""

    audience_id: int
    user_id: int
    kind: int
    timestamp: int
    identities: Identities
    previous_identities: Identities | None


# --- JSON parameters --------------------------------------------------------------------------------------------


class JsonTexts:
    """The JSON text of identities objects, each encoded once; texts read from the database are kept as they are."""

    def __init__(self) -> None:
        # Keyed by id(); the value keeps the object alive, so that its id is not reused for another one.
        self._texts: dict[int, tuple[Identities, str]] = {}

    def remember(self, identities: Identities, text: str) -> None:
        self._texts[id(identities)] = (identities, text)

    def __call__(self, identities: Identities | None) -> str | None:
        if identities is None:
            return None
        known = self._texts.get(id(identities))
        if known is None:
            known = self._texts[id(identities)] = (identities, identities_json(identities))
        return known[1]


_json_encode = json.JSONEncoder(ensure_ascii=False).encode


def _json_rows(rows: Iterable[tuple]) -> str:
    """Rows as one JSON array of arrays: a single parameter, which PostgreSQL reads with `jsonb_array_elements`.
    Far cheaper to send than one array per column, whose text elements the driver escapes one by one."""
    return _json_encode(list(rows))


# --- locks (project.transactions, steps 1 and 3) ----------------------------------------------------------------


def audience_lock_key_share(audience_id: int) -> datetime | None:
    """The audience's row FOR KEY SHARE, which Django's ORM does not offer: locked against deletion, not against
    other batches, until the transaction ends. Returns its `deleted_at`."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT deleted_at FROM {Audience._meta.db_table} WHERE id = %s FOR KEY SHARE", [audience_id])
        row = cursor.fetchone()
    if row is None:
        raise Audience.DoesNotExist(audience_id)
    return row[0]


def audience_lock_orm(audience_id: int) -> datetime | None:
    """The ORM twin of `audience_lock_key_share` (SQLite writes one at a time)."""
    return Audience.objects.select_for_update().filter(pk=audience_id).values_list("deleted_at", flat=True).get()


def audiences_lock_key_share(audience_ids: set[int]) -> set[int]:
    """Lock these audiences against deletion until the transaction ends, as a batch locks its own; returns those
    not deleted (a deletion being committed is waited for), so that no change is queued after a deletion record.
    Elsewhere than on PostgreSQL, the audiences as given."""
    if not audience_ids or not is_postgresql():
        return audience_ids
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {Audience._meta.db_table} WHERE id = ANY(%s) AND deleted_at IS NULL ORDER BY id"
            " FOR KEY SHARE",
            [sorted(audience_ids)],
        )
        return {row[0] for row in cursor.fetchall()}


def users_lock_postgresql(
    first_identities: dict[str, Identities | None], audience_id: int | None, texts: JsonTexts
) -> tuple[dict[str, UserRow], dict[int, MembershipRow]]:
    """Create missing users (with the identities they first come with), then lock them all, in id order so that
    concurrent requests cannot deadlock. Returns them by user id, with their memberships of one audience by user pk."""
    users_table, memberships_table = User._meta.db_table, Membership._meta.db_table
    now = timezone.now()
    created = {user_id: identities or {} for user_id, identities in first_identities.items()}
    users: dict[str, UserRow] = {}
    memberships: dict[int, MembershipRow] = {}
    with connection.cursor() as cursor:
        # New users are inserted in user id order: two batches holding the same new users in other orders would
        # otherwise each wait for a row the other inserted (project.transactions, step 3).
        cursor.execute(
            f"INSERT INTO {users_table} (external_id, identities, created_at, updated_at)"
            " SELECT r->>0, r->>1, %s, %s FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS rows(r, n)"
            f" WHERE NOT EXISTS (SELECT FROM {users_table} AS u WHERE u.external_id = r->>0)"
            " ORDER BY n ON CONFLICT (external_id) DO NOTHING",
            [
                now,
                now,
                _json_rows((user_id, texts(created[user_id])) for user_id in sorted(created)),
            ],
        )
        cursor.execute(
            f"SELECT id, external_id, identities FROM {users_table}"
            " WHERE external_id = ANY(%s::text[]) ORDER BY id FOR NO KEY UPDATE",
            [list(first_identities)],
        )
        for pk, external_id, text in cursor.fetchall():
            identities = created[external_id]
            if text != texts(identities):  # it had other identities before this batch (or the same in another order)
                identities = json.loads(text)
                texts.remember(identities, text)
            users[external_id] = UserRow(pk, external_id, identities)
        if audience_id is not None and users:
            # A statement of its own, after the locks: one that waited for a user's lock sees the memberships that
            # the batch holding it committed (a join in the locking statement would read them as they were before).
            cursor.execute(
                f"SELECT user_id, is_member, last_changed_timestamp FROM {memberships_table}"
                " WHERE audience_id = %s AND user_id = ANY(%s::bigint[])",
                [audience_id, [user.pk for user in users.values()]],
            )
            for pk, is_member, last_changed_timestamp in cursor.fetchall():
                memberships[pk] = MembershipRow(audience_id, pk, is_member, last_changed_timestamp)
    return users, memberships


def users_lock_orm(
    first_identities: dict[str, Identities | None], audience_id: int | None
) -> tuple[dict[str, UserRow], dict[int, MembershipRow]]:
    """The ORM twin of `users_lock_postgresql`: the same users, created and locked in the same order."""
    external_ids = list(first_identities)
    existing = set(User.objects.filter(external_id__in=external_ids).values_list("external_id", flat=True))
    missing = [
        User(external_id=external_id, identities=first_identities[external_id] or {})
        for external_id in external_ids
        if external_id not in existing
    ]
    if missing:
        User.objects.bulk_create(missing, batch_size=1000, ignore_conflicts=True)
    locked = (
        User.objects.select_for_update(no_key=True)
        .filter(external_id__in=external_ids)
        .order_by("pk")
        .values_list("pk", "external_id", "identities")
    )
    users = {external_id: UserRow(pk, external_id, identities) for pk, external_id, identities in locked}
    memberships: dict[int, MembershipRow] = {}
    if audience_id is not None:
        for user_id, is_member, last_changed_timestamp in Membership.objects.filter(
            audience_id=audience_id, user__in=[user.pk for user in users.values()]
        ).values_list("user_id", "is_member", "last_changed_timestamp"):
            memberships[user_id] = MembershipRow(audience_id, user_id, is_member, last_changed_timestamp)
    return users, memberships


# --- the writes of a batch --------------------------------------------------------------------------------------


def changes_save_postgresql(
    now: datetime,
    users: Collection[UserRow],
    memberships: Collection[MembershipRow],
    changes: Sequence[ChangeRow],
    texts: JsonTexts,
) -> list[int]:
    """Write the users' identities, the memberships and the changes, one statement per table; returns the changes'
    ids, in the order of the changes."""
    with connection.cursor() as cursor:
        if users:
            cursor.execute(
                f"UPDATE {User._meta.db_table} AS u SET identities = r->>1, updated_at = %s"
                " FROM jsonb_array_elements(%s::jsonb) AS rows(r) WHERE u.id = (r->>0)::bigint",
                [now, _json_rows((user.pk, texts(user.identities)) for user in users)],
            )
        if memberships:
            cursor.execute(
                f"INSERT INTO {Membership._meta.db_table} (audience_id, user_id, is_member, last_changed_timestamp,"
                " updated_at)"
                " SELECT (r->>0)::bigint, (r->>1)::bigint, (r->>2)::boolean, (r->>3)::bigint, %s"
                " FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS rows(r, n) ORDER BY n"
                " ON CONFLICT (audience_id, user_id) DO UPDATE SET is_member = EXCLUDED.is_member,"
                " last_changed_timestamp = EXCLUDED.last_changed_timestamp, updated_at = EXCLUDED.updated_at",
                [
                    now,
                    _json_rows((m.audience_id, m.user_id, m.is_member, m.last_changed_timestamp) for m in memberships),
                ],
            )
        if not changes:
            return []
        # Ids are drawn in the order of the rows, that is the order of the changes.
        cursor.execute(
            f"INSERT INTO {MembershipChange._meta.db_table} (audience_id, user_id, kind, timestamp, identities,"
            " previous_identities, created_at)"
            " SELECT (r->>0)::bigint, (r->>1)::bigint, (r->>2)::smallint, (r->>3)::bigint, r->>4, r->>5, %s"
            " FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS rows(r, n) ORDER BY n"
            " RETURNING id",
            [
                now,
                _json_rows(
                    (
                        c.audience_id,
                        c.user_id,
                        c.kind,
                        c.timestamp,
                        texts(c.identities),
                        texts(c.previous_identities),
                    )
                    for c in changes
                ),
            ],
        )
        return sorted(row[0] for row in cursor.fetchall())


def changes_save_orm(
    now: datetime, users: Collection[UserRow], memberships: Collection[MembershipRow], changes: Sequence[ChangeRow]
) -> list[int]:
    """The ORM twin of `changes_save_postgresql`: the same rows."""
    if users:
        User.objects.bulk_create(
            [User(pk=user.pk, external_id=user.external_id, identities=user.identities) for user in users],
            batch_size=1000,
            update_conflicts=True,
            unique_fields=["external_id"],
            update_fields=["identities", "updated_at"],
        )
    if memberships:
        Membership.objects.bulk_create(
            [
                Membership(
                    audience_id=membership.audience_id,
                    user_id=membership.user_id,
                    is_member=membership.is_member,
                    last_changed_timestamp=membership.last_changed_timestamp,
                )
                for membership in memberships
            ],
            batch_size=1000,
            update_conflicts=True,
            unique_fields=["audience", "user"],
            update_fields=["is_member", "last_changed_timestamp", "updated_at"],
        )
    saved = MembershipChange.objects.bulk_create(
        [MembershipChange(**change._asdict()) for change in changes], batch_size=1000
    )
    return [change.pk for change in saved]


# --- reads (audiences.selectors) --------------------------------------------------------------------------------

# Above every code point: the end of the range of strings that start with a given prefix, in binary order.
_LAST_CHARACTER = "\U0010ffff"


def users_with_id_prefix_postgresql(prefix: str, after: str | None, limit: int) -> list[tuple[int, str]]:
    """The LIKE prefix, the keyset and the order all use the pattern operators of the `varchar_pattern_ops` index
    that Django adds beside the unique index: one range scan that stops after `limit` rows in any collation."""
    sql = (
        f"SELECT id, external_id FROM {User._meta.db_table} WHERE external_id LIKE %s"
        + (" AND external_id ~>~ %s" if after is not None else "")
        + " ORDER BY external_id USING ~<~ LIMIT %s"
    )
    params: list[object] = [connection.ops.prep_for_like_query(prefix) + "%"]
    params += [after] if after is not None else []
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, limit])
        return [(pk, external_id) for pk, external_id in cursor.fetchall()]


def users_with_id_prefix_orm(prefix: str, after: str | None, limit: int) -> list[tuple[int, str]]:
    """The ORM twin of `users_with_id_prefix_postgresql`: SQLite compares in binary, so the prefix is the range
    [prefix, prefix + the last code point)."""
    queryset = User.objects.filter(external_id__gte=prefix, external_id__lt=prefix + _LAST_CHARACTER)
    if after is not None:
        queryset = queryset.filter(external_id__gt=after)
    return list(queryset.order_by("external_id").values_list("pk", "external_id")[:limit])


def user_changes_in_all_audiences_postgresql(user_pk: int, before: int | None, limit: int) -> list[MembershipChange]:
    """A user's changes in all audiences, newest first: a backward range scan of `change_user_audience_idx` once per
    audience of the user's memberships, each stopping after `limit` rows, then merged."""
    changes, memberships = MembershipChange._meta.db_table, Membership._meta.db_table
    before_condition = "AND c.id < %s" if before is not None else ""
    sql = f"""
        SELECT c.* FROM (SELECT audience_id FROM {memberships} WHERE user_id = %s) AS m
        CROSS JOIN LATERAL (
            SELECT * FROM {changes} AS c
            WHERE c.user_id = %s AND c.audience_id = m.audience_id {before_condition}
            ORDER BY c.id DESC LIMIT %s
        ) AS c
        ORDER BY c.id DESC LIMIT %s
    """
    params = [user_pk, user_pk, *([before] if before is not None else []), limit, limit]
    return list(MembershipChange.objects.raw(sql, params))


def user_changes_orm(user: User, audience_id: int | None, before: int | None, limit: int) -> list[MembershipChange]:
    """A user's changes, newest first, in one audience or all of them: the ORM twin of
    `user_changes_in_all_audiences_postgresql`, and the query in one audience on every database."""
    queryset = MembershipChange.objects.filter(user=user).order_by("-pk")
    if audience_id is not None:
        queryset = queryset.filter(audience_id=audience_id)
    if before is not None:
        queryset = queryset.filter(pk__lt=before)
    return list(queryset[:limit])
