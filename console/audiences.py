"""Admin for audiences. Audiences are renamed and deleted through audiences.services: deleting is a soft delete that
keeps the id and sends one AudienceDeleted record on each connection.

An audience's members (/admin/audiences/audience/<id>/members/) are a page of their own, paged by keyset through
audiences.selectors: no offset and no count over memberships or users, however large they grow.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse

from audiences.models import Audience
from audiences.selectors import MEMBERS_PER_PAGE, audience_members_page, audience_members_search
from audiences.services import audience_create, audience_delete, audience_update, audiences_delete
from integrations.models import Connection
from integrations.outbox import OUTBOX

from .base import ReadOnly, choice_filter
from .display import (
    can_view_configurations,
    can_view_users,
    connection_status_badge,
    date_column,
    identities_short,
    int_or_none,
    page_url,
    unix_time,
    user_changes_url,
)


class MemberRow(NamedTuple):
    user_id: str
    user_url: str
    identities: str
    last_change: str
    changes_url: str


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
        audiences_delete(audience_ids=queryset.values_list("pk", flat=True), outbox=OUTBOX)

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
        return self.has_view_permission(request, obj) and can_view_users(request)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None and self.has_members_permission(request, obj):
            context = {**context, "members_url": self._members_url(obj), "member_total": f"{obj.member_count:,}"}
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _members_url(self, audience: Audience, **params: object) -> str:
        return page_url(
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
            page = audience_members_page(audience=audience, after=int_or_none(after))
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
                    user_changes_url(membership.user_id, audience.pk),
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
