"""Admin for audiences and users. Audiences are renamed and deleted through audiences.services: deleting is a soft
delete that keeps the id and sends one AudienceDeleted record on each connection."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator

from integrations.admin import can_view_configurations, connection_status_badge, date_column
from integrations.models import Connection
from project.admin_tools import ReadOnlyAdmin, choice_filter

from .models import Audience, Membership, User
from .services import audience_create, audience_delete, audience_update

USER_MEMBERSHIPS_SHOWN = 100
NO_IDENTITIES = "none (anonymous)"


DeletedFilter = choice_filter(
    "deleted", "deleted", {"no": ("live", Q(deleted_at__isnull=True)), "yes": ("deleted", Q(deleted_at__isnull=False))}
)


class ConnectionInline(admin.TabularInline):
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

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

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
        audience_delete(audience=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Audience]) -> None:
        for audience in queryset.filter(deleted_at__isnull=True).order_by("pk"):
            audience_delete(audience=audience)

    def get_deleted_objects(self, objs, request):
        """Nothing cascades: the rows stay, marked deleted. (The default would walk every membership and stop at
        the protected connections.)"""
        audiences = list(objs)
        perms_needed = set() if self.has_delete_permission(request) else {self.opts.verbose_name}
        model_count = {self.opts.verbose_name_plural: len(audiences)}
        return [str(audience) for audience in audiences], model_count, perms_needed, []


@admin.register(User)
class UserAdmin(ReadOnlyAdmin):
    """Users are written by the API only (identities go through user_identities_update, which sends the changes)."""

    list_display = ["external_id", "identity_summary", "created", "updated"]
    search_fields = ["external_id"]
    search_help_text = "A user id, or the beginning of one (case-sensitive)."
    fields = ["external_id", "identities_pretty", "memberships", "created_detail", "updated_detail"]
    readonly_fields = fields
    ordering = ["-id"]
    show_full_result_count = False

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[User], search_term: str):
        """Exact or prefix match on the user id, which the unique index answers (no scan of every user)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(external_id=term) | Q(external_id__startswith=term)), False

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
        memberships = (
            Membership.objects.filter(user=obj, is_member=True).select_related("audience").order_by("audience_id")
        )[:USER_MEMBERSHIPS_SHOWN]
        return format_html_join(mark_safe("<br>"), "{}", ((str(m.audience),) for m in memberships)) or "-"
