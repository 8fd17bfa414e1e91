"""Reads for audiences and users.

The member and change lists page by keyset (the last row's key in the URL), never by offset or with a count: an
audience may have a million members and the change log tens of millions of rows, so every query here reads at most
one page of rows (or a fixed number of candidates) through an index.
"""

from __future__ import annotations

from typing import NamedTuple

from django.db.models import prefetch_related_objects
from django.shortcuts import get_object_or_404

from . import sql
from .models import Audience, Membership, MembershipChange, User

MEMBERS_PER_PAGE = 100
# Users whose id starts with the search term, looked at per page of a member search. Most may not be members of the
# audience: a page then shows fewer members and Next page looks at the next ones.
MEMBER_SEARCH_CANDIDATES = 500
CHANGES_PER_PAGE = 50
USER_AUDIENCES_SHOWN = 200


def audience_get_live(audience_id: int) -> Audience:
    """The audience, or 404 when it does not exist or was deleted."""
    return get_object_or_404(Audience.objects.live(), pk=audience_id)


class MembersPage(NamedTuple):
    members: list[Membership]
    # The `after` of the next page (a membership id when browsing, a user id when searching); None on the last page.
    next_after: int | str | None


def audience_members_page(
    *, audience: Audience, after: int | None = None, limit: int = MEMBERS_PER_PAGE
) -> MembersPage:
    """Current members in membership id order, each with its user: one query of `limit + 1` rows on the partial index
    `membership_members_idx` (audience, id) WHERE is_member, however many members there are and wherever the page
    starts."""
    queryset = Membership.objects.filter(audience=audience, is_member=True).select_related("user").order_by("pk")
    if after is not None:
        queryset = queryset.filter(pk__gt=after)
    members = list(queryset[: limit + 1])
    if len(members) > limit:
        return MembersPage(members[:limit], members[limit - 1].pk)
    return MembersPage(members, None)


def audience_members_search(
    *,
    audience: Audience,
    term: str,
    after: str | None = None,
    limit: int = MEMBERS_PER_PAGE,
    candidates: int = MEMBER_SEARCH_CANDIDATES,
) -> MembersPage:
    """Current members whose user id is `term` or starts with it, in user id order (case-sensitive).

    Two queries whatever the sizes: the next `candidates` users with the prefix (after the user id `after`), from the
    index on user ids, then their memberships in this audience, from its unique index. When those users hold fewer
    than `limit` members but more users may match, the page is short and `next_after` is the last user looked at."""
    found = users_with_id_prefix(prefix=term, after=after, limit=candidates)
    position = {pk: index for index, (pk, _) in enumerate(found)}
    members = sorted(
        Membership.objects.filter(audience=audience, is_member=True, user_id__in=list(position)).select_related("user"),
        key=lambda membership: position[membership.user_id],
    )
    if len(members) > limit:
        return MembersPage(members[:limit], members[limit - 1].user.external_id)
    return MembersPage(members, found[-1][1] if len(found) == candidates else None)


def users_with_id_prefix(*, prefix: str, after: str | None = None, limit: int) -> list[tuple[int, str]]:
    """(pk, user id) of the first `limit` users whose id starts with `prefix` and sorts after `after`, in binary order.

    On PostgreSQL the LIKE prefix, the keyset and the order all use the pattern operators of the `varchar_pattern_ops`
    index that Django adds beside the unique index: one range scan that stops after `limit` rows in any collation
    (the unique index cannot answer LIKE, and the pattern index cannot sort by the collation). SQLite compares in
    binary, so there the prefix is the range [prefix, prefix + the last code point)."""
    if not prefix or len(prefix) > User._meta.get_field("external_id").max_length:
        return []
    if sql.is_postgresql():
        return sql.users_with_id_prefix_postgresql(prefix, after, limit)
    return sql.users_with_id_prefix_orm(prefix, after, limit)


class ChangesPage(NamedTuple):
    changes: list[MembershipChange]
    # The `before` of the next (older) page; None on the last page.
    next_before: int | None


def user_change_history(
    *, user: User, audience_id: int | None = None, before: int | None = None, limit: int = CHANGES_PER_PAGE
) -> ChangesPage:
    """The user's membership changes, newest first, each with its audience, in two queries.

    In one audience: a backward range scan of `change_user_audience_idx` (user, audience, id). In all of them, on
    PostgreSQL: the same scan once per audience of the user's memberships, each stopping after `limit + 1` rows, then
    merged, so that a user with a long history (or a planner that would walk the primary key backwards looking for
    them) never reads more than a page per audience. Every change of a user is in an audience where the user has a
    membership row: memberships are never deleted."""
    if audience_id is None and sql.is_postgresql():
        changes = sql.user_changes_in_all_audiences_postgresql(user.pk, before, limit + 1)
    else:
        changes = sql.user_changes_orm(user, audience_id, before, limit + 1)
    prefetch_related_objects(changes, "audience")
    if len(changes) > limit:
        return ChangesPage(changes[:limit], changes[limit - 1].pk)
    return ChangesPage(changes, None)


def user_audiences(*, user: User, limit: int = USER_AUDIENCES_SHOWN) -> list[Audience]:
    """The audiences where the user has (or had) a membership, in id order: the choices of the change history's
    audience filter."""
    return list(Audience.objects.filter(memberships__user=user).order_by("pk")[:limit])


def audience_by_id(audience_id: int) -> Audience | None:
    """The audience, deleted or not, or None when there is none."""
    return Audience.objects.filter(pk=audience_id).first()


def user_memberships(*, user: User, limit: int) -> list[Membership]:
    """The first `limit` audiences the user is a member of, in audience id order, each with its audience."""
    return list(
        Membership.objects.filter(user=user, is_member=True).select_related("audience").order_by("audience_id")[:limit]
    )
