"""Admin pieces shared by the model admins: list filters (named choices, a connection, a time window), and read-only
admins and inlines."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from integrations.models import Delivery, DeliveryAttempt, SystemAlert
from integrations.selectors import connection_choices

from .display import connection_admin_link


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


class ConnectionListFilter(admin.RelatedFieldListFilter):
    """Filter by connection, labelled with audience names loaded in one query (not one per connection)."""

    def field_choices(self, field, request, model_admin):
        return connection_choices()


TIME_WINDOWS = {
    "1h": ("last hour", timedelta(hours=1)),
    "24h": ("last 24 hours", timedelta(hours=24)),
    "7d": ("last 7 days", timedelta(days=7)),
}


def time_filter(field: str) -> type[admin.SimpleListFilter]:
    """Created in the last hour, 24 hours or 7 days: a range on an index, where a date hierarchy would first list
    every distinct date of the table."""

    class TimeFilter(admin.SimpleListFilter):
        title = "time"
        parameter_name = "time"

        def lookups(self, request, model_admin):
            return [(key, label) for key, (label, _) in TIME_WINDOWS.items()]

        def queryset(self, request, queryset):
            window = TIME_WINDOWS.get(self.value() or "")
            return queryset.filter(**{f"{field}__gte": timezone.now() - window[1]}) if window else queryset

    return TimeFilter


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


class EngineLogAdmin(ReadOnlyAdmin):
    """Alerts, deliveries and attempts: read-only, each row linked to its connection."""

    @admin.display(description="Connection", ordering="connection")
    def connection_link(self, obj: SystemAlert | Delivery | DeliveryAttempt) -> str:
        return connection_admin_link(obj.connection)
