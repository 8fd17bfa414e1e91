"""Writes for audiences, users and memberships (contract section 4). Each call is one transaction, and every change
it applies is written together with its deliveries, by the `Outbox` the caller hands in (`integrations.outbox.OUTBOX`:
this app never imports the integrations that forward its changes)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, Protocol

from django.db import connection
from django.db.models import F
from django.utils import timezone

from project.transactions import atomic_with_retry

from .identities import Identities, identities_json
from .models import Audience, Membership, MembershipChange, User


class AudienceDeleted(Exception):
    pass


class Outbox(Protocol):
    """Writes the deliveries of what a service saved, inside the service's transaction."""

    def changes_saved(self, changes: list[AppliedChange]) -> None: ...

    def audience_deleted(self, *, audience: Audience, timestamp: int) -> None: ...


@dataclass(frozen=True)
class ChangeIn:
    """One validated change from the API."""

    user_id: str
    is_member: bool
    identities: Identities | None = None
    timestamp: int | None = None


@dataclass
class ApplyResult:
    accepted: int = 0
    ignored: int = 0
    stale: int = 0
    change_ids: list[int] = field(default_factory=list)


def now_timestamp() -> int:
    return int(time.time())


# --- audiences --------------------------------------------------------------------------------------------------


def audience_create(*, internal_name: str, external_name: str = "") -> Audience:
    audience = Audience(internal_name=internal_name, external_name=external_name)
    audience.full_clean()
    audience.save()
    return audience


def audience_update(*, audience: Audience, **fields: str) -> Audience:
    """Rename. Records sent from now on carry the new name; the id never changes."""
    for name, value in fields.items():
        setattr(audience, name, value)
    audience.full_clean()
    audience.save(update_fields=list(fields))
    return audience


@atomic_with_retry
def audience_delete(*, audience: Audience, outbox: Outbox) -> Audience:
    """Soft-delete: the id is never reused, and each connection gets one `AudienceDeleted` record.

    The exclusive lock waits for the batches of changes being applied (they hold a shared lock on the audience), and
    makes later ones wait and then see the deletion: no change is queued after the deletion record."""
    audience = Audience.objects.select_for_update().get(pk=audience.pk)
    if audience.is_deleted:
        return audience
    audience.deleted_at = timezone.now()
    audience.save(update_fields=["deleted_at"])
    outbox.audience_deleted(audience=audience, timestamp=now_timestamp())
    return audience


# --- memberships ------------------------------------------------------------------------------------------------
#
# A batch is read once (its users, locked in id order, and their memberships), applied in memory in order, then
# written with one statement per table. On PostgreSQL those statements are written by hand and take their rows as one
# JSON parameter, which is several times faster than building, compiling and quoting thousands of model instances; the
# ORM writes the same rows on other databases (SQLite).


@dataclass(slots=True)
class _UserState:
    pk: int
    external_id: str
    identities: Identities


@dataclass(slots=True)
class _MembershipState:
    audience_id: int
    user_id: int
    is_member: bool
    last_changed_timestamp: int


class _Change(NamedTuple):
    """A change to save, with the user's identities after it (and before it, for an identity change)."""

    audience_id: int
    user_id: int
    kind: int
    timestamp: int
    identities: Identities
    previous_identities: Identities | None


class AppliedChange(NamedTuple):
    """A saved change, with what an `Outbox` reads of it."""

    pk: int
    audience_id: int
    user_id: int
    kind: int
    timestamp: int


class _JsonTexts:
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


def _is_postgresql() -> bool:
    return connection.vendor == "postgresql"


_json_encode = json.JSONEncoder(ensure_ascii=False).encode


def _json_rows(rows: Iterable[tuple]) -> str:
    """Rows as one JSON array of arrays: a single parameter, which PostgreSQL reads with `jsonb_array_elements`.
    Far cheaper to send than one array per column, whose text elements the driver escapes one by one."""
    return _json_encode(list(rows))


class _ChangeLog:
    """Collects the changes of one transaction, then writes them, their deliveries and the new state in bulk."""

    def __init__(self, texts: _JsonTexts, outbox: Outbox) -> None:
        self.texts = texts
        self.outbox = outbox
        self.changes: list[_Change] = []
        self.memberships: dict[tuple[int, int], _MembershipState] = {}
        self.users: dict[int, _UserState] = {}

    def save(self) -> list[AppliedChange]:
        now = timezone.now()
        change_ids = self._save_postgresql(now) if _is_postgresql() else self._save_orm(now)
        applied = [
            AppliedChange(pk, change.audience_id, change.user_id, change.kind, change.timestamp)
            for pk, change in zip(change_ids, self.changes, strict=True)
        ]
        if applied:
            self.outbox.changes_saved(applied)
        return applied

    def _save_postgresql(self, now: datetime) -> list[int]:
        texts = self.texts
        with connection.cursor() as cursor:
            if self.users:
                cursor.execute(
                    "UPDATE audiences_user AS u SET identities = r->>1, updated_at = %s"
                    " FROM jsonb_array_elements(%s::jsonb) AS rows(r) WHERE u.id = (r->>0)::bigint",
                    [now, _json_rows((user.pk, texts(user.identities)) for user in self.users.values())],
                )
            if self.memberships:
                cursor.execute(
                    "INSERT INTO audiences_membership (audience_id, user_id, is_member, last_changed_timestamp,"
                    " updated_at)"
                    " SELECT (r->>0)::bigint, (r->>1)::bigint, (r->>2)::boolean, (r->>3)::bigint, %s"
                    " FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS rows(r, n) ORDER BY n"
                    " ON CONFLICT (audience_id, user_id) DO UPDATE SET is_member = EXCLUDED.is_member,"
                    " last_changed_timestamp = EXCLUDED.last_changed_timestamp, updated_at = EXCLUDED.updated_at",
                    [
                        now,
                        _json_rows(
                            (m.audience_id, m.user_id, m.is_member, m.last_changed_timestamp)
                            for m in self.memberships.values()
                        ),
                    ],
                )
            if not self.changes:
                return []
            # Ids are drawn in the order of the rows, that is the order of the changes.
            cursor.execute(
                "INSERT INTO audiences_membershipchange (audience_id, user_id, kind, timestamp, identities,"
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
                        for c in self.changes
                    ),
                ],
            )
            return sorted(row[0] for row in cursor.fetchall())

    def _save_orm(self, now: datetime) -> list[int]:
        if self.users:
            User.objects.bulk_create(
                [
                    User(pk=user.pk, external_id=user.external_id, identities=user.identities)
                    for user in self.users.values()
                ],
                batch_size=1000,
                update_conflicts=True,
                unique_fields=["external_id"],
                update_fields=["identities", "updated_at"],
            )
        if self.memberships:
            Membership.objects.bulk_create(
                [
                    Membership(
                        audience_id=membership.audience_id,
                        user_id=membership.user_id,
                        is_member=membership.is_member,
                        last_changed_timestamp=membership.last_changed_timestamp,
                    )
                    for membership in self.memberships.values()
                ],
                batch_size=1000,
                update_conflicts=True,
                unique_fields=["audience", "user"],
                update_fields=["is_member", "last_changed_timestamp", "updated_at"],
            )
        changes = MembershipChange.objects.bulk_create(
            [MembershipChange(**change._asdict()) for change in self.changes], batch_size=1000
        )
        return [change.pk for change in changes]


def _lock_users(
    first_identities: dict[str, Identities | None], audience_id: int | None, texts: _JsonTexts
) -> tuple[dict[str, _UserState], dict[int, _MembershipState]]:
    """Create missing users (with the identities they first come with), then lock them all, in id order so that
    concurrent requests cannot deadlock. Returns them by user id, with their memberships of one audience by user pk."""
    if _is_postgresql():
        return _lock_users_postgresql(first_identities, audience_id, texts)
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
    users = {external_id: _UserState(pk, external_id, identities) for pk, external_id, identities in locked}
    memberships: dict[int, _MembershipState] = {}
    if audience_id is not None:
        for user_id, is_member, last_changed_timestamp in Membership.objects.filter(
            audience_id=audience_id, user__in=[user.pk for user in users.values()]
        ).values_list("user_id", "is_member", "last_changed_timestamp"):
            memberships[user_id] = _MembershipState(audience_id, user_id, is_member, last_changed_timestamp)
    return users, memberships


def _lock_users_postgresql(
    first_identities: dict[str, Identities | None], audience_id: int | None, texts: _JsonTexts
) -> tuple[dict[str, _UserState], dict[int, _MembershipState]]:
    now = timezone.now()
    created = {user_id: identities or {} for user_id, identities in first_identities.items()}
    users: dict[str, _UserState] = {}
    memberships: dict[int, _MembershipState] = {}
    with connection.cursor() as cursor:
        # New users are inserted in user id order: two batches holding the same new users in other orders would
        # otherwise each wait for a row the other inserted (project.transactions, step 3).
        cursor.execute(
            "INSERT INTO audiences_user (external_id, identities, created_at, updated_at)"
            " SELECT r->>0, r->>1, %s, %s FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS rows(r, n)"
            " WHERE NOT EXISTS (SELECT FROM audiences_user AS u WHERE u.external_id = r->>0)"
            " ORDER BY n ON CONFLICT (external_id) DO NOTHING",
            [
                now,
                now,
                _json_rows((user_id, texts(created[user_id])) for user_id in sorted(created)),
            ],
        )
        cursor.execute(
            "SELECT id, external_id, identities FROM audiences_user"
            " WHERE external_id = ANY(%s::text[]) ORDER BY id FOR NO KEY UPDATE",
            [list(first_identities)],
        )
        for pk, external_id, text in cursor.fetchall():
            identities = created[external_id]
            if text != texts(identities):  # it had other identities before this batch (or the same in another order)
                identities = json.loads(text)
                texts.remember(identities, text)
            users[external_id] = _UserState(pk, external_id, identities)
        if audience_id is not None and users:
            # A statement of its own, after the locks: one that waited for a user's lock sees the memberships that
            # the batch holding it committed (a join in the locking statement would read them as they were before).
            cursor.execute(
                "SELECT user_id, is_member, last_changed_timestamp FROM audiences_membership"
                " WHERE audience_id = %s AND user_id = ANY(%s::bigint[])",
                [audience_id, [user.pk for user in users.values()]],
            )
            for pk, is_member, last_changed_timestamp in cursor.fetchall():
                memberships[pk] = _MembershipState(audience_id, pk, is_member, last_changed_timestamp)
    return users, memberships


def _member_elsewhere(user_pks: list[int], audience_id: int | None) -> dict[int, list[_MembershipState]]:
    """The live memberships of these users outside one audience, by user."""
    memberships: dict[int, list[_MembershipState]] = {}
    if not user_pks:
        return memberships
    queryset = Membership.objects.filter(user__in=user_pks, is_member=True, audience__deleted_at__isnull=True)
    if audience_id is not None:
        queryset = queryset.exclude(audience_id=audience_id)
    rows = list(queryset.order_by("pk").values_list("audience_id", "user_id", "last_changed_timestamp"))
    live = _audiences_shared_lock({other_audience_id for other_audience_id, _, _ in rows})
    for other_audience_id, user_id, last_changed_timestamp in rows:
        if other_audience_id in live:
            memberships.setdefault(user_id, []).append(
                _MembershipState(other_audience_id, user_id, True, last_changed_timestamp)
            )
    return memberships


def _audiences_shared_lock(audience_ids: set[int]) -> set[int]:
    """Lock these audiences against deletion until the transaction ends, as a batch locks its own; returns those
    not deleted (a deletion being committed is waited for), so that no change is queued after a deletion record."""
    if not audience_ids or not _is_postgresql():
        return audience_ids
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id FROM audiences_audience WHERE id = ANY(%s) AND deleted_at IS NULL ORDER BY id FOR KEY SHARE",
            [sorted(audience_ids)],
        )
        return {row[0] for row in cursor.fetchall()}


def _identities_changed(
    log: _ChangeLog, user: _UserState, identities: Identities, timestamp: int, memberships: list[_MembershipState]
) -> None:
    """Replace a user's identities, and log an identity change in each of the given memberships (of other audiences).

    Their memberships keep their own last timestamps: a change made in one audience, or by the users API, never makes
    a later change in another audience stale (contract section 14)."""
    previous = user.identities
    user.identities = identities
    log.users[user.pk] = user
    for membership in memberships:
        log.changes.append(
            _Change(
                membership.audience_id,
                user.pk,
                MembershipChange.Kind.IDENTITIES_CHANGED,
                timestamp,
                identities,
                previous,
            )
        )


@atomic_with_retry
def membership_changes_apply(*, audience: Audience, changes: list[ChangeIn], outbox: Outbox) -> ApplyResult:
    """Apply a validated batch of changes in order. Stale and no-op changes are ignored and counted.

    Batches for one audience run side by side (each user's changes are serialised by the user's row lock, and each
    connection's deliveries by `deliveries_insert_lock`); only a deletion of the audience waits for them."""
    if _audience_shared_lock(audience.pk) is not None:
        raise AudienceDeleted(audience.pk)
    audience_id = audience.pk
    result = ApplyResult()
    now = now_timestamp()
    first_identities: dict[str, Identities | None] = {}
    for change in changes:
        first_identities.setdefault(change.user_id, change.identities)
    texts = _JsonTexts()
    users, memberships = _lock_users(first_identities, audience_id, texts)
    changing = {
        users[change.user_id].pk
        for change in changes
        if change.identities is not None and change.identities != users[change.user_id].identities
    }
    elsewhere = _member_elsewhere(list(changing), audience_id)
    log = _ChangeLog(texts, outbox)
    member_delta = 0

    for change in changes:
        user = users[change.user_id]
        membership = memberships.get(user.pk)
        timestamp = now if change.timestamp is None else change.timestamp
        if membership is not None and timestamp < membership.last_changed_timestamp:
            result.stale += 1
            continue
        is_member = membership is not None and membership.is_member
        identities_differ = change.identities is not None and change.identities != user.identities
        if change.is_member == is_member and not (is_member and identities_differ):
            result.ignored += 1
            continue
        previous = user.identities
        if identities_differ:
            _identities_changed(log, user, change.identities, timestamp, elsewhere.get(user.pk, []))
        if membership is None:
            membership = memberships[user.pk] = _MembershipState(audience_id, user.pk, False, timestamp)
        if change.is_member and is_member:
            kind = MembershipChange.Kind.IDENTITIES_CHANGED
        else:
            kind = MembershipChange.Kind.JOINED if change.is_member else MembershipChange.Kind.LEFT
            member_delta += 1 if change.is_member else -1
        membership.is_member = change.is_member
        membership.last_changed_timestamp = timestamp
        log.memberships[(audience_id, user.pk)] = membership
        log.changes.append(
            _Change(
                audience_id,
                user.pk,
                kind,
                timestamp,
                user.identities,
                previous if kind == MembershipChange.Kind.IDENTITIES_CHANGED else None,
            )
        )
        result.accepted += 1

    result.ignored += result.stale
    result.change_ids = [change.pk for change in log.save()]
    # Last: the row lock this takes makes another batch for the audience wait until this one commits.
    if member_delta or result.stale:
        Audience.objects.filter(pk=audience_id).update(
            member_count=F("member_count") + member_delta, stale_change_count=F("stale_change_count") + result.stale
        )
    return result


def _audience_shared_lock(audience_id: int) -> datetime | None:
    """Lock the audience against deletion (not against other batches) until the transaction ends; returns its
    `deleted_at`. PostgreSQL's FOR KEY SHARE, which Django's ORM does not offer; SQLite writes one at a time."""
    if not _is_postgresql():
        return Audience.objects.select_for_update().filter(pk=audience_id).values_list("deleted_at", flat=True).get()
    with connection.cursor() as cursor:
        cursor.execute("SELECT deleted_at FROM audiences_audience WHERE id = %s FOR KEY SHARE", [audience_id])
        row = cursor.fetchone()
    if row is None:
        raise Audience.DoesNotExist(audience_id)
    return row[0]


@atomic_with_retry
def user_identities_update(*, user_id: str, identities: Identities, outbox: Outbox) -> User:
    """Replace a user's identities; every audience where the user is a member gets an identity change."""
    texts = _JsonTexts()
    user = _lock_users({user_id: identities}, None, texts)[0][user_id]
    if identities != user.identities:
        log = _ChangeLog(texts, outbox)
        _identities_changed(log, user, identities, now_timestamp(), _member_elsewhere([user.pk], None).get(user.pk, []))
        log.save()
    return User.objects.get(pk=user.pk)
