"""Admin for audiences and users. Audiences are renamed and deleted through audiences.services: deleting is a soft
delete that keeps the id and sends one AudienceDeleted record on each connection.

An audience's members (/admin/audiences/audience/<id>/members/) and a user's membership changes
(/admin/audiences/user/<id>/changes/) are pages of their own, paged by keyset through audiences.selectors: no offset
and no count over memberships, changes or users, however large they grow.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, NamedTuple

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection as db_connection
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.utils.text import Truncator

from integrations.admin import badge, can_view_configurations, connection_status_badge, date_column, when
from integrations.models import Connection
from integrations.outbox import OUTBOX
from project.admin_tools import ReadOnly, ReadOnlyAdmin, choice_filter

from .models import Audience, Membership, MembershipChange, User
from .selectors import (
    MEMBERS_PER_PAGE,
    audience_members_page,
    audience_members_search,
    user_audiences,
    user_change_history,
    users_with_id_prefix,
)
from .services import audience_create, audience_delete, audience_update

USER_MEMBERSHIPS_SHOWN = 100
USER_RECENT_CHANGES = 10
# A user search lists at most this many users (the first user ids with the prefix), so that neither the list nor
# its count reads every user of a short prefix.
USER_SEARCH_LIMIT = 1000
NO_IDENTITIES = "none (anonymous)"
KIND_TONES = {
    MembershipChange.Kind.JOINED: "ok",
    MembershipChange.Kind.LEFT: "muted",
    MembershipChange.Kind.IDENTITIES_CHANGED: "info",
    MembershipChange.Kind.AUDIENCE_DELETED: "warn",
}


def unix_time(timestamp: int) -> str:
    """Unix seconds as the records carry them, with the date they stand for (its relative time as the tooltip)."""
    return format_html(
        '<span class="nowrap">{}</span> ({})', timestamp, when(datetime.fromtimestamp(timestamp, UTC), compact=True)
    )


def identities_short(identities: dict[str, str] | None) -> str:
    """One line for a list: "CustomerId: 42, Email: …", cut at 80 characters."""
    if not identities:
        return NO_IDENTITIES
    return Truncator(", ".join(f"{key}: {value}" for key, value in identities.items())).chars(80)


def identities_lines(identities: dict[str, str] | None) -> str:
    """Each identity on its own line, long values cut (the whole value is the tooltip)."""
    if identities is None:
        return "-"
    if not identities:
        return NO_IDENTITIES
    return format_html_join(
        mark_safe("<br>"),
        '{}: <span title="{}">{}</span>',
        ((key, value, Truncator(value).chars(48)) for key, value in identities.items()),
    )


def _int_or_none(value: str | None) -> int | None:
    """A keyset or filter parameter: anything but a whole number reads as absent (the first page, no filter)."""
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _can_view_users(request: HttpRequest) -> bool:
    return request.user.has_perm("audiences.view_user") or request.user.has_perm("audiences.change_user")


def _can_view_audiences(request: HttpRequest) -> bool:
    return request.user.has_perm("audiences.view_audience") or request.user.has_perm("audiences.change_audience")


def _page_url(base: str, **params: object) -> str:
    present = {name: value for name, value in params.items() if value not in (None, "")}
    return f"{base}?{urlencode(present)}" if present else base


def _user_changes_url(user_pk: int, audience_id: int | None = None) -> str:
    return _page_url(reverse("admin:audiences_user_changes", args=[user_pk]), audience=audience_id)


class UserPaginator(Paginator):
    """The user list unfiltered, on PostgreSQL: the planner's row estimate of the users table rather than a COUNT(*)
    over millions of users. A search lists at most USER_SEARCH_LIMIT users, which are counted exactly."""

    ESTIMATE_FROM = 100_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if db_connection.vendor == "postgresql" and isinstance(queryset, QuerySet) and not queryset.query.where:
            with db_connection.cursor() as cursor:
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [User._meta.db_table])
                row = cursor.fetchone()
            if row and row[0] >= self.ESTIMATE_FROM:
                return row[0]
        return super().count


class MemberRow(NamedTuple):
    user_id: str
    user_url: str
    identities: str
    last_change: str
    changes_url: str


class ChangeRow(NamedTuple):
    change_id: int
    audience: str
    kind: str
    timestamp: str
    identities: str
    previous_identities: str


def _change_rows(request: HttpRequest, changes: list[MembershipChange]) -> list[ChangeRow]:
    audience_links = _can_view_audiences(request)

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


DeletedFilter = choice_filter(
    "deleted", "deleted", {"no": ("live", Q(deleted_at__isnull=True)), "yes": ("deleted", Q(deleted_at__isnull=False))}
)


class ConnectionInline(ReadOnly, admin.TabularInline):
    """The audience's connections, read-only: they are edited on their own page (Connection Settings). Users without
    a permission on Configuration see the configuration's name, not a link to its page (which holds the credentials).
    """

    model = Connection
    fields = ["stream_name", "region", "status_badge", "configuration", "last_delivery", "last_error"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = "connections"

    def get_fields(self, request: HttpRequest, obj: Any = None):
        if can_view_configurations(request):
            return self.fields
        return ["configuration_name" if name == "configuration" else name for name in self.fields]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None):
        return self.get_fields(request, obj)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Connection]:
        return super().get_queryset(request).select_related("configuration", "audience")

    last_delivery = date_column("last_delivered_at", "Last delivery")

    @admin.display(description="Status")
    def status_badge(self, obj: Connection) -> str:
        return connection_status_badge(obj)

    @admin.display(description="Configuration")
    def configuration_name(self, obj: Connection) -> str:
        return obj.configuration.name


@admin.register(Audience)
class AudienceAdmin(admin.ModelAdmin):
    list_display = ["id", "internal_name", "external_name", "member_count", "created", "deleted"]
    list_display_links = ["id", "internal_name"]
    list_filter = [DeletedFilter]
    search_fields = ["internal_name", "external_name"]
    fields = [
        "internal_name",
        "external_name",
        "member_count",
        "stale_change_count",
        "created_detail",
        "deleted_detail",
    ]
    readonly_fields = ["member_count", "stale_change_count", "created_detail", "deleted_detail"]
    inlines = [ConnectionInline]
    delete_confirmation_template = "admin/audiences/audience/delete_confirmation.html"
    delete_selected_confirmation_template = "admin/audiences/audience/delete_selected_confirmation.html"

    created = date_column("created_at", "Created")
    deleted = date_column("deleted_at", "Deleted")
    created_detail = date_column("created_at", "Created", compact=False)
    deleted_detail = date_column("deleted_at", "Deleted", compact=False)

    def get_fields(self, request: HttpRequest, obj: Audience | None = None):
        return self.fields if obj is not None else ["internal_name", "external_name"]

    def get_inlines(self, request: HttpRequest, obj: Audience | None):
        return self.inlines if obj is not None else []

    def has_change_permission(self, request: HttpRequest, obj: Audience | None = None) -> bool:
        return super().has_change_permission(request, obj) and not (obj is not None and obj.is_deleted)

    def has_delete_permission(self, request: HttpRequest, obj: Audience | None = None) -> bool:
        return super().has_delete_permission(request, obj) and not (obj is not None and obj.is_deleted)

    def save_model(self, request: HttpRequest, obj: Audience, form: Any, change: bool) -> None:
        if change:
            audience_update(audience=obj, **{name: form.cleaned_data[name] for name in form.changed_data})
            return
        created = audience_create(internal_name=obj.internal_name, external_name=obj.external_name)
        obj.pk = created.pk
        obj.refresh_from_db()
        obj._state.adding = False

    # Deleting is always a soft delete through the service, never a DELETE of the row.

    def delete_model(self, request: HttpRequest, obj: Audience) -> None:
        audience_delete(audience=obj, outbox=OUTBOX)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Audience]) -> None:
        for audience in queryset.filter(deleted_at__isnull=True).order_by("pk"):
            audience_delete(audience=audience, outbox=OUTBOX)

    # --- the members page ---

    def get_urls(self):
        members = path(
            "<path:object_id>/members/",
            self.admin_site.admin_view(self.members_view),
            name=f"{self.opts.app_label}_{self.opts.model_name}_members",
        )
        return [members, *super().get_urls()]

    def has_members_permission(self, request: HttpRequest, obj: Audience | None = None) -> bool:
        """The members page shows users and their identities: it needs a permission on users too."""
        return self.has_view_permission(request, obj) and _can_view_users(request)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None and self.has_members_permission(request, obj):
            context = {**context, "members_url": self._members_url(obj), "member_total": f"{obj.member_count:,}"}
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _members_url(self, audience: Audience, **params: object) -> str:
        return _page_url(
            reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_members", args=[audience.pk]), **params
        )

    def members_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The current members, MEMBERS_PER_PAGE at a time: in membership order (`?after=<membership id>`), or those
        whose user id is or starts with `?q=` in user id order (`?q=…&after=<user id>`). The total is the audience's
        stored member count."""
        if not self.has_members_permission(request):
            raise PermissionDenied
        audience = self.get_object(request, unquote(object_id))
        if audience is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        term = request.GET.get("q", "").strip()
        after = request.GET.get("after") or None
        if term:
            page = audience_members_search(audience=audience, term=term, after=after)
        else:
            page = audience_members_page(audience=audience, after=_int_or_none(after))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Members of {audience.name}",
            "subtitle": None,
            "opts": self.opts,
            "original": audience,
            "audience": audience,
            "member_total": f"{audience.member_count:,}",
            "query": term,
            "rows": [
                MemberRow(
                    membership.user.external_id,
                    reverse("admin:audiences_user_change", args=[membership.user_id]),
                    identities_short(membership.user.identities),
                    unix_time(membership.last_changed_timestamp),
                    _user_changes_url(membership.user_id, audience.pk),
                )
                for membership in page.members
            ],
            "per_page": MEMBERS_PER_PAGE,
            "first_url": self._members_url(audience, q=term) if after else None,
            "next_url": self._members_url(audience, q=term, after=page.next_after) if page.next_after else None,
            "clear_url": self._members_url(audience) if term else None,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/audiences/audience/members.html", context)

    def get_deleted_objects(self, objs, request):
        """Nothing cascades: the rows stay, marked deleted. (The default would walk every membership and stop at
        the protected connections.)"""
        audiences = list(objs)
        perms_needed = set() if self.has_delete_permission(request) else {self.opts.verbose_name}
        model_count = {self.opts.verbose_name_plural: len(audiences)}
        return [str(audience) for audience in audiences], model_count, perms_needed, []


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
    paginator = UserPaginator

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
                "more_changes_url": _page_url(base, before=page.next_before) if page.next_before else None,
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
        audience_id = _int_or_none(request.GET.get("audience"))
        before = _int_or_none(request.GET.get("before"))
        page = user_change_history(user=user, audience_id=audience_id, before=before)
        audience = next((a for a in audiences if a.pk == audience_id), None)
        if audience is None and audience_id is not None:
            audience = Audience.objects.filter(pk=audience_id).first()
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
            "newest_url": _page_url(base, audience=audience_id) if before else None,
            "older_url": _page_url(base, audience=audience_id, before=page.next_before) if page.next_before else None,
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
        memberships = (
            Membership.objects.filter(user=obj, is_member=True).select_related("audience").order_by("audience_id")
        )[:USER_MEMBERSHIPS_SHOWN]
        return (
            format_html_join(
                mark_safe("<br>"),
                '{} <a href="{}" aria-label="Membership changes in {}">changes</a>',
                ((m.audience, _user_changes_url(obj.pk, m.audience_id), m.audience) for m in memberships),
            )
            or "-"
        )
