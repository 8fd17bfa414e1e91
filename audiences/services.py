"""Writes for audiences, users and memberships (contract section 4). Each call is one transaction, and every change
it applies is written together with its deliveries."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from integrations.services import deliveries_create_for_audience_deletion, deliveries_create_for_changes

from .identities import Identities
from .models import Audience, Membership, MembershipChange, User


class AudienceDeleted(Exception):
    pass


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


@transaction.atomic
def audience_delete(*, audience: Audience) -> Audience:
    """Soft-delete: the id is never reused, and each connection gets one `AudienceDeleted` record."""
    audience = Audience.objects.select_for_update(no_key=True).get(pk=audience.pk)
    if audience.is_deleted:
        return audience
    audience.deleted_at = timezone.now()
    audience.save(update_fields=["deleted_at"])
    deliveries_create_for_audience_deletion(audience=audience, timestamp=now_timestamp())
    return audience


# --- memberships ------------------------------------------------------------------------------------------------


class _ChangeLog:
    """Collects the changes of one transaction, then writes them, their deliveries and the new state in bulk."""

    def __init__(self) -> None:
        self.changes: list[MembershipChange] = []
        self.memberships: dict[tuple[int, int], Membership] = {}
        self.users: dict[int, User] = {}
        self.member_deltas: dict[int, int] = {}

    def add(self, **fields: object) -> None:
        self.changes.append(MembershipChange(**fields))

    def save(self) -> None:
        if self.users:
            User.objects.bulk_create(
                list(self.users.values()),
                batch_size=1000,
                update_conflicts=True,
                unique_fields=["external_id"],
                update_fields=["identities", "updated_at"],
            )
        if self.memberships:
            Membership.objects.bulk_create(
                list(self.memberships.values()),
                batch_size=1000,
                update_conflicts=True,
                unique_fields=["audience", "user"],
                update_fields=["is_member", "last_changed_timestamp", "updated_at"],
            )
        for audience_id, delta in self.member_deltas.items():
            if delta:
                Audience.objects.filter(pk=audience_id).update(member_count=F("member_count") + delta)
        if self.changes:
            MembershipChange.objects.bulk_create(self.changes, batch_size=1000)
            deliveries_create_for_changes(self.changes)


def _lock_users(first_identities: dict[str, Identities | None]) -> dict[str, User]:
    """Create missing users (with the identities they first come with), then lock them all, in id order so that
    concurrent requests cannot deadlock."""
    external_ids = list(first_identities)
    existing = set(User.objects.filter(external_id__in=external_ids).values_list("external_id", flat=True))
    missing = [
        User(external_id=external_id, identities=first_identities[external_id] or {})
        for external_id in external_ids
        if external_id not in existing
    ]
    if missing:
        User.objects.bulk_create(missing, batch_size=1000, ignore_conflicts=True)
    locked = User.objects.select_for_update(no_key=True).filter(external_id__in=external_ids).order_by("pk")
    return {user.external_id: user for user in locked}


def _member_elsewhere(users: list[User], audience_id: int | None) -> dict[int, list[Membership]]:
    """The live memberships of these users outside one audience, by user."""
    memberships: dict[int, list[Membership]] = {}
    if not users:
        return memberships
    queryset = Membership.objects.filter(
        user__in=[user.pk for user in users], is_member=True, audience__deleted_at__isnull=True
    )
    if audience_id is not None:
        queryset = queryset.exclude(audience_id=audience_id)
    for membership in queryset:
        memberships.setdefault(membership.user_id, []).append(membership)
    return memberships


def _identities_changed(
    log: _ChangeLog, user: User, identities: Identities, timestamp: int, memberships: list[Membership]
) -> None:
    """Replace a user's identities, and log an identity change in each of the given memberships."""
    previous = user.identities
    user.identities = identities
    user.updated_at = timezone.now()
    log.users[user.pk] = user
    for membership in memberships:
        membership.last_changed_timestamp = max(membership.last_changed_timestamp, timestamp)
        membership.updated_at = user.updated_at
        log.memberships[(membership.audience_id, user.pk)] = membership
        log.add(
            audience_id=membership.audience_id,
            user=user,
            kind=MembershipChange.Kind.IDENTITIES_CHANGED,
            timestamp=timestamp,
            identities=identities,
            previous_identities=previous,
        )


@transaction.atomic
def membership_changes_apply(*, audience: Audience, changes: list[ChangeIn]) -> ApplyResult:
    """Apply a validated batch of changes in order. Stale and no-op changes are ignored and counted."""
    audience = Audience.objects.select_for_update(no_key=True).get(pk=audience.pk)
    if audience.is_deleted:
        raise AudienceDeleted(audience.pk)
    result = ApplyResult()
    now = now_timestamp()
    first_identities: dict[str, Identities | None] = {}
    for change in changes:
        first_identities.setdefault(change.user_id, change.identities)
    users = _lock_users(first_identities)
    memberships = {
        membership.user_id: membership
        for membership in Membership.objects.filter(audience=audience, user__in=[user.pk for user in users.values()])
    }
    changing = {
        users[change.user_id].pk: users[change.user_id]
        for change in changes
        if change.identities is not None and change.identities != users[change.user_id].identities
    }
    elsewhere = _member_elsewhere(list(changing.values()), audience.pk)
    log = _ChangeLog()

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
            membership = memberships[user.pk] = Membership(audience=audience, user=user)
        if change.is_member and is_member:
            kind = MembershipChange.Kind.IDENTITIES_CHANGED
        else:
            kind = MembershipChange.Kind.JOINED if change.is_member else MembershipChange.Kind.LEFT
            log.member_deltas[audience.pk] = log.member_deltas.get(audience.pk, 0) + (1 if change.is_member else -1)
        membership.is_member = change.is_member
        membership.last_changed_timestamp = timestamp
        membership.updated_at = timezone.now()
        log.memberships[(audience.pk, user.pk)] = membership
        log.add(
            audience=audience,
            user=user,
            kind=kind,
            timestamp=timestamp,
            identities=user.identities,
            previous_identities=previous if kind == MembershipChange.Kind.IDENTITIES_CHANGED else None,
        )
        result.accepted += 1

    result.ignored += result.stale
    if result.stale:
        Audience.objects.filter(pk=audience.pk).update(stale_change_count=F("stale_change_count") + result.stale)
    log.save()
    result.change_ids = [change.pk for change in log.changes]
    return result


@transaction.atomic
def user_identities_update(*, user_id: str, identities: Identities) -> User:
    """Replace a user's identities; every audience where the user is a member gets an identity change."""
    user = _lock_users({user_id: identities})[user_id]
    if identities != user.identities:
        log = _ChangeLog()
        _identities_changed(log, user, identities, now_timestamp(), _member_elsewhere([user], None).get(user.pk, []))
        log.save()
    return user
