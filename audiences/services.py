"""Writes for audiences, users and memberships (contract section 4). Each call is one transaction, and every change
it applies is written together with its deliveries, by the `Outbox` the caller hands in (`integrations.outbox.OUTBOX`:
this app never imports the integrations that forward its changes)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, Protocol

from django.core.exceptions import ValidationError
from django.db.models import F
from django.utils import timezone

from project.transactions import atomic_with_retry

from . import sql
from .attributes import Attributes, attribute_times, attributes_count_error, attributes_merged
from .identities import Identities
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


def audiences_delete(*, audience_ids: Iterable[int], outbox: Outbox) -> int:
    """`audience_delete` on each audience not deleted yet, one transaction each, in id order. Returns how many."""
    live = Audience.objects.filter(pk__in=list(audience_ids), deleted_at__isnull=True).order_by("pk")
    deleted = 0
    for audience in live:
        audience_delete(audience=audience, outbox=outbox)
        deleted += 1
    return deleted


# --- memberships ------------------------------------------------------------------------------------------------
#
# A batch is read once (its users, locked in id order, and their memberships), applied in memory in order, then
# written with one statement per table (audiences.sql). On PostgreSQL those statements are written by hand and take
# their rows as one JSON parameter, which is several times faster than building, compiling and quoting thousands of
# model instances; the ORM writes the same rows on other databases (SQLite).


class AppliedChange(NamedTuple):
    """A saved change, with what an `Outbox` reads of it."""

    pk: int
    audience_id: int
    user_id: int
    kind: int
    timestamp: int


class _ChangeLog:
    """Collects the changes of one transaction, then writes them, their deliveries and the new state in bulk."""

    def __init__(self, texts: sql.JsonTexts, outbox: Outbox) -> None:
        self.texts = texts
        self.outbox = outbox
        self.changes: list[sql.ChangeRow] = []
        self.memberships: dict[tuple[int, int], sql.MembershipRow] = {}
        self.users: dict[int, sql.UserRow] = {}

    def save(self) -> list[AppliedChange]:
        now = timezone.now()
        users, memberships = self.users.values(), self.memberships.values()
        if sql.is_postgresql():
            change_ids = sql.changes_save_postgresql(now, users, memberships, self.changes, self.texts)
        else:
            change_ids = sql.changes_save_orm(now, users, memberships, self.changes)
        applied = [
            AppliedChange(pk, change.audience_id, change.user_id, change.kind, change.timestamp)
            for pk, change in zip(change_ids, self.changes, strict=True)
        ]
        if applied:
            self.outbox.changes_saved(applied)
        return applied


def _lock_users(
    first_identities: dict[str, Identities | None], audience_id: int | None, texts: sql.JsonTexts
) -> tuple[dict[str, sql.UserRow], dict[int, sql.MembershipRow]]:
    """Create missing users (with the identities they first come with), then lock them all, in id order so that
    concurrent requests cannot deadlock. Returns them by user id, with their memberships of one audience by user pk."""
    if sql.is_postgresql():
        return sql.users_lock_postgresql(first_identities, audience_id, texts)
    return sql.users_lock_orm(first_identities, audience_id)


def _member_elsewhere(user_pks: list[int], audience_id: int | None) -> dict[int, list[sql.MembershipRow]]:
    """The live memberships of these users outside one audience, by user."""
    memberships: dict[int, list[sql.MembershipRow]] = {}
    if not user_pks:
        return memberships
    queryset = Membership.objects.filter(user__in=user_pks, is_member=True, audience__deleted_at__isnull=True)
    if audience_id is not None:
        queryset = queryset.exclude(audience_id=audience_id)
    rows = list(queryset.order_by("pk").values_list("audience_id", "user_id", "last_changed_timestamp"))
    live = sql.audiences_lock_key_share({other_audience_id for other_audience_id, _, _ in rows})
    for other_audience_id, user_id, last_changed_timestamp in rows:
        if other_audience_id in live:
            memberships.setdefault(user_id, []).append(
                sql.MembershipRow(other_audience_id, user_id, True, last_changed_timestamp)
            )
    return memberships


def _identities_changed(
    log: _ChangeLog, user: sql.UserRow, identities: Identities, timestamp: int, memberships: list[sql.MembershipRow]
) -> None:
    """Replace a user's identities, and log an identity change in each of the given memberships (of other audiences).

    Their memberships keep their own last timestamps: a change made in one audience, or by the users API, never makes
    a later change in another audience stale (contract section 14)."""
    previous = user.identities
    user.identities = identities
    log.users[user.pk] = user
    for membership in memberships:
        log.changes.append(
            sql.ChangeRow(
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
    texts = sql.JsonTexts()
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
            membership = memberships[user.pk] = sql.MembershipRow(audience_id, user.pk, False, timestamp)
        if change.is_member and is_member:
            kind = MembershipChange.Kind.IDENTITIES_CHANGED
        else:
            kind = MembershipChange.Kind.JOINED if change.is_member else MembershipChange.Kind.LEFT
            member_delta += 1 if change.is_member else -1
        membership.is_member = change.is_member
        membership.last_changed_timestamp = timestamp
        log.memberships[(audience_id, user.pk)] = membership
        log.changes.append(
            sql.ChangeRow(
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
    if sql.is_postgresql():
        return sql.audience_lock_key_share(audience_id)
    return sql.audience_lock_orm(audience_id)


@dataclass(frozen=True)
class UserIn:
    """One validated item of `POST /api/v1/users`."""

    user_id: str
    identities: Identities | None = None
    attributes: Attributes | None = None


@dataclass
class UsersResult:
    accepted: int = 0
    ignored: int = 0


@atomic_with_retry
def users_update(*, users: list[UserIn], outbox: Outbox) -> UsersResult:
    """`user_update` for a batch, in order, in one transaction with one statement per table: new users are created,
    identities replaced (with their identity changes), attributes merged. An item that changes nothing is ignored."""
    first_identities: dict[str, Identities | None] = {}
    for item in users:
        first_identities.setdefault(item.user_id, item.identities)
    existing = set(User.objects.filter(external_id__in=list(first_identities)).values_list("external_id", flat=True))
    texts = sql.JsonTexts()
    rows = _lock_users(first_identities, None, texts)[0]
    pks = [rows[user_id].pk for user_id in first_identities]
    elsewhere = _member_elsewhere([rows[item.user_id].pk for item in users if item.identities is not None], None)
    stored = dict(User.objects.filter(pk__in=pks).values_list("pk", "attributes"))
    attributes = dict(stored)
    log = _ChangeLog(texts, outbox)
    result, now, errors = UsersResult(), now_timestamp(), {}
    for index, item in enumerate(users):
        row = rows[item.user_id]
        changed = item.user_id not in existing
        existing.add(item.user_id)
        if item.identities is not None and item.identities != row.identities:
            _identities_changed(log, row, item.identities, now, elsewhere.get(row.pk, []))
            changed = True
        if item.attributes:
            merged = attributes_merged(attributes[row.pk], item.attributes)
            for path, message in attributes_count_error(merged, f"users[{index}].attributes"):
                errors[path] = [message]
            changed = changed or merged != attributes[row.pk]
            attributes[row.pk] = merged
        result.accepted += changed
        result.ignored += not changed
    if errors:
        raise ValidationError(errors)
    log.save()
    moment = timezone.now()
    User.objects.bulk_update(
        [
            User(pk=pk, attributes=value, attribute_times=attribute_times(value), updated_at=moment)
            for pk, value in attributes.items()
            if value != stored[pk]
        ],
        ["attributes", "attribute_times", "updated_at"],
        batch_size=1000,
    )
    return result


def user_identities_update(*, user_id: str, identities: Identities, outbox: Outbox) -> User:
    """Replace a user's identities; every audience where the user is a member gets an identity change."""
    return user_update(user_id=user_id, identities=identities, outbox=outbox)


@atomic_with_retry
def user_update(
    *, user_id: str, identities: Identities | None = None, attributes: Attributes | None = None, outbox: Outbox
) -> User:
    """Create the user if it is new; replace its identities (every audience where it is a member gets an identity
    change) and merge `attributes` into its attributes (a null removes one), in one transaction."""
    texts = sql.JsonTexts()
    user = _lock_users({user_id: identities}, None, texts)[0][user_id]
    if identities is not None and identities != user.identities:
        log = _ChangeLog(texts, outbox)
        _identities_changed(log, user, identities, now_timestamp(), _member_elsewhere([user.pk], None).get(user.pk, []))
        log.save()
    if attributes:
        current = User.objects.filter(pk=user.pk).values_list("attributes", flat=True).get()
        merged = attributes_merged(current, attributes)
        if errors := attributes_count_error(merged):
            raise ValidationError({path: [message] for path, message in errors})
        if merged != current:
            User.objects.filter(pk=user.pk).update(
                attributes=merged, attribute_times=attribute_times(merged), updated_at=timezone.now()
            )
    return User.objects.get(pk=user.pk)
