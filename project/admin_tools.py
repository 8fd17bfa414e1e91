"""Admin pieces shared by the apps: a list filter of named choices, and read-only admins and inlines."""

from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest


def choice_filter(title: str, parameter_name: str, choices: dict[str, tuple[str, Q]]) -> type[admin.SimpleListFilter]:
    class ChoiceFilter(admin.SimpleListFilter):
        def lookups(self, request, model_admin) -> list[tuple[str, str]]:
            return [(value, label) for value, (label, _) in choices.items()]

        def queryset(self, request, queryset: QuerySet) -> QuerySet:
            choice = choices.get(self.value() or "")
            return queryset.filter(choice[1]) if choice else queryset

    ChoiceFilter.title = title
    ChoiceFilter.parameter_name = parameter_name
    return ChoiceFilter


class ReadOnly:
    """Rows written by the product only (logs, alerts, users fed by the API, an audience's connections shown inline):
    the admin looks, never adds, changes or deletes."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyAdmin(ReadOnly, admin.ModelAdmin):
    """A read-only model admin."""


def admin_lockout(request: HttpRequest, response: Any = None, credentials: dict | None = None) -> Any:
    """django-axes' answer to a locked-out login (AXES_LOCKOUT_CALLABLE): the admin's login page, with the site's
    header, saying why and for how long, with status 429."""
    from django.conf import settings
    from django.template.response import TemplateResponse

    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    context = {**admin.site.each_context(request), "title": "Locked out", "lockout_minutes": minutes}
    return TemplateResponse(request, "admin/locked_out.html", context, status=429).render()
