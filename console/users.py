"""Admin for users, which the API alone writes. A user's membership changes (/admin/audiences/user/<id>/changes/) are
a page of their own, paged by keyset through audiences.selectors: no offset and no count over changes or users,
however large they grow.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator

from audiences.models import Audience, MembershipChange, User
from audiences.selectors import (
    audience_by_id,
    user_audiences,
    user_change_history,
    user_memberships,
    users_with_id_prefix,
)

from .base import ReadOnlyAdmin
from .display import (
    KIND_TONES,
    NO_IDENTITIES,
    badge,
    can_view_audiences,
    date_column,
    identities_lines,
    int_or_none,
    page_url,
    unix_time,
    user_changes_url,
)
from .paginators import CappedPaginator

USER_MEMBERSHIPS_SHOWN = 100
USER_RECENT_CHANGES = 10
# A user search lists at most this many users (the first user ids with the prefix), so that neither the list nor
# its count reads every user of a short prefix.
USER_SEARCH_LIMIT = 1000


class ChangeRow(NamedTuple):
    change_id: int
    audience: str
    kind: str
    timestamp: str
    identities: str
    previous_identities: str


def _change_rows(request: HttpRequest, changes: list[MembershipChange]) -> list[ChangeRow]:
    audience_links = can_view_audiences(request)

    def audience_cell(audience: Audience) -> str:
        label = format_html("{} (#{})", audience.name, audience.pk)
        if not audience_links:
            return label
        return format_html('<a href="{}">{}</a>', reverse("admin:audiences_audience_change", args=[audience.pk]), label)

    return [
        ChangeRow(
            change.pk,
            audience_cell(change.audience),
            badge(change.get_kind_display(), KIND_TONES.get(change.kind, "muted")),
            unix_time(change.timestamp),
            identities_lines(change.identities),
            identities_lines(change.previous_identities)
            if change.kind == MembershipChange.Kind.IDENTITIES_CHANGED
            else "-",
        )
        for change in changes
    ]


@admin.register(User)
class UserAdmin(ReadOnlyAdmin):
    """Users are written by the API only (identities go through user_identities_update, which sends the changes).
    Each user's page ends with its latest membership changes, and links to all of them."""

    list_display = ["external_id", "identity_summary", "created", "updated"]
    search_fields = ["external_id"]
    search_help_text = (
        f"A user id, or the beginning of one (case-sensitive): the first {USER_SEARCH_LIMIT:,} matching user ids."
    )
    fields = ["external_id", "identities_pretty", "memberships", "created_detail", "updated_detail"]
    readonly_fields = fields
    ordering = ["-id"]
    show_full_result_count = False
    paginator = CappedPaginator

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True) -> CappedPaginator:
        """A search lists at most USER_SEARCH_LIMIT users: they are counted exactly, never capped."""
        return self.paginator(queryset, per_page, orphans, allow_empty_first_page, exact=True)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[User], search_term: str):
        """Exact or prefix match on the user id, from the index on user ids (no scan of every user), and at most
        USER_SEARCH_LIMIT users, so that counting them stays cheap too."""
        term = search_term.strip()
        if not term:
            return queryset, False
        found = users_with_id_prefix(prefix=term, limit=USER_SEARCH_LIMIT)
        return queryset.filter(pk__in=[pk for pk, _ in found]), False

    # --- the membership changes page ---

    def get_urls(self):
        changes = path(
            "<path:object_id>/changes/",
            self.admin_site.admin_view(self.changes_view),
            name=f"{self.opts.app_label}_{self.opts.model_name}_changes",
        )
        return [changes, *super().get_urls()]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            page = user_change_history(user=obj, limit=USER_RECENT_CHANGES)
            base = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changes", args=[obj.pk])
            context = {
                **context,
                "changes_url": base,
                "recent_changes": _change_rows(request, page.changes),
                "more_changes_url": page_url(base, before=page.next_before) if page.next_before else None,
            }
        return super().render_change_form(request, context, add, change, form_url, obj)

    def changes_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The user's membership changes, newest first, CHANGES_PER_PAGE at a time (`?before=<change id>`), in all
        audiences or in one (`?audience=<id>`)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        user = self.get_object(request, unquote(object_id))
        if user is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        audiences = user_audiences(user=user)
        audience_id = int_or_none(request.GET.get("audience"))
        before = int_or_none(request.GET.get("before"))
        page = user_change_history(user=user, audience_id=audience_id, before=before)
        audience = next((a for a in audiences if a.pk == audience_id), None)
        if audience is None and audience_id is not None:
            audience = audience_by_id(audience_id)
        base = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changes", args=[user.pk])
        context = {
            **self.admin_site.each_context(request),
            "title": f"Membership changes of {user.external_id}" + (f" in {audience.name}" if audience else ""),
            "subtitle": None,
            "opts": self.opts,
            "original": user,
            "audiences": audiences,
            "audience_id": audience_id,
            "rows": _change_rows(request, page.changes),
            "newest_url": page_url(base, audience=audience_id) if before else None,
            "older_url": page_url(base, audience=audience_id, before=page.next_before) if page.next_before else None,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/audiences/user/changes.html", context)

    # --- columns and read-only fields ---

    created = date_column("created_at", "Created")
    updated = date_column("updated_at", "Updated")
    created_detail = date_column("created_at", "Created", compact=False)
    updated_detail = date_column("updated_at", "Updated", compact=False)

    @admin.display(description="Identities")
    def identity_summary(self, obj: User) -> str:
        return Truncator(", ".join(obj.identities or {})).chars(80) or NO_IDENTITIES

    @admin.display(description="Identities")
    def identities_pretty(self, obj: User) -> str:
        if not obj.identities:
            return NO_IDENTITIES
        return format_html("<pre>{}</pre>", json.dumps(obj.identities, indent=2, ensure_ascii=False))

    @admin.display(description=f"Member of (first {USER_MEMBERSHIPS_SHOWN})")
    def memberships(self, obj: User) -> str:
        """Each audience links to the user's changes in it."""
        memberships = user_memberships(user=obj, limit=USER_MEMBERSHIPS_SHOWN)
        return (
            format_html_join(
                mark_safe("<br>"),
                '{} <a href="{}" aria-label="Membership changes in {}">changes</a>',
                ((m.audience, user_changes_url(obj.pk, m.audience_id), m.audience) for m in memberships),
            )
            or "-"
        )
