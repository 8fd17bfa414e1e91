"""System Alerts: connections ranked by alert volume over a window, each connection's drill-down, and acknowledging
(integrations.alerts), which needs `integrations.acknowledge_systemalert`, not the change permission."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import F, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from console.context_processors import request_open_alert_count
from integrations.alerts import alerts_acknowledge, alerts_acknowledge_all
from integrations.models import OPEN_ALERTS, SystemAlert
from integrations.selectors import (
    ALERT_WINDOWS,
    DEFAULT_ALERT_WINDOW,
    alert_ranking,
    alerts_with_window_count,
    connection_by_id,
)

from .base import ConnectionListFilter, EngineLogAdmin, choice_filter
from .display import badge, connection_status_badge, date_column, folded, plural, utc_text

OpenAlertFilter = choice_filter(
    "open",
    "open",
    {
        "yes": ("open", OPEN_ALERTS),
        "no": ("acknowledged or resolved", ~OPEN_ALERTS),
    },
)


class AlertWindowFilter(admin.SimpleListFilter):
    """The window of the ranking and of the "in window" counts (1 h, 12 h, 24 h or 7 d; 12 h by default, as in
    mParticle's System Alerts). It chooses what is counted, not which alert rows are listed."""

    title = "window"
    parameter_name = "window"

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _) in ALERT_WINDOWS.items()]

    def value(self):
        return alert_window(super().value())

    def choices(self, changelist):
        for key, label in self.lookup_choices:
            yield {
                "selected": self.value() == key,
                "query_string": changelist.get_query_string({self.parameter_name: key}),
                "display": label,
            }

    def queryset(self, request, queryset):
        return queryset


def alert_window(value: str | None) -> str:
    """The window asked for, or the default one."""
    return value if value in ALERT_WINDOWS else DEFAULT_ALERT_WINDOW


@admin.register(SystemAlert)
class SystemAlertAdmin(EngineLogAdmin):
    """System Alerts: connections ranked by alert volume over a window (above the list), and one row per connection
    and alert type, which the connection filter turns into that connection's drill-down."""

    list_display = ["open_badge", "type", "connection_link", "window_count", "count", "last_seen_column", "message"]
    list_display_links = ["type"]
    list_filter = [AlertWindowFilter, OpenAlertFilter, ("connection", ConnectionListFilter), "type"]
    list_select_related = ["connection__audience"]
    actions = ["acknowledge"]
    fields = [
        "connection",
        "type",
        "open_badge",
        "count",
        "first_seen_detail",
        "last_seen_detail",
        "last_message",
        "sample_record_pretty",
        "acknowledged_at_detail",
        "resolved_at_detail",
    ]

    def get_list_display(self, request: HttpRequest):
        """A connection's drill-down drops the connection column for first seen and the sample record."""
        if "connection__id__exact" in request.GET:
            return ["open_badge", "type", "window_count", "count", "first_seen_column", "last_seen_column", "message",
                    "sample"]  # fmt: skip
        return self.list_display

    def get_urls(self):
        name = f"{self.opts.app_label}_{self.opts.model_name}_acknowledge_all"
        return [
            path("acknowledge-all/", self.admin_site.admin_view(self.acknowledge_all_view), name=name),
            *super().get_urls(),
        ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[SystemAlert]:
        since = timezone.now() - ALERT_WINDOWS[alert_window(request.GET.get("window"))][1]
        return alerts_with_window_count(super().get_queryset(request), since=since).order_by(
            "acknowledged", F("resolved_at").desc(nulls_first=True), "-last_seen"
        )

    def changelist_view(self, request, extra_context=None):
        window = alert_window(request.GET.get("window"))
        connection_id = request.GET.get("connection__id__exact", "")
        connection = connection_by_id(int(connection_id)) if connection_id.isdigit() else None
        label, length = ALERT_WINDOWS[window]
        context = {
            "title": f"System Alerts: {connection}" if connection else "System Alerts",
            "window": window,
            "window_label": label,
            "windows": [(key, text) for key, (text, _) in ALERT_WINDOWS.items()],
            "ranking": []
            if connection
            else [
                {**row, "status_badge": connection_status_badge(row["connection"])}
                for row in alert_ranking(since=timezone.now() - length)
            ],
            "drill_down": connection,
            "open_total": request_open_alert_count(request),
            "can_acknowledge": self.has_acknowledge_permission(request),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def acknowledge_all_view(self, request: HttpRequest) -> HttpResponse:
        """Acknowledge every open alert, or every open alert of one connection (`connection` in the form)."""
        if not self.has_acknowledge_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        connection_id = request.POST.get("connection", "")
        if connection_id and not connection_id.isdigit():
            return HttpResponseBadRequest("connection: expected a connection id.")
        count = alerts_acknowledge_all(connection_id=int(connection_id) if connection_id else None)
        self.message_user(request, f"Acknowledged {plural(count, 'alert')}.", messages.SUCCESS)
        back = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist")
        if connection_id.isdigit():
            back += f"?connection__id__exact={connection_id}"
        return HttpResponseRedirect(back)

    last_seen_column = date_column("last_seen", "Last seen")
    first_seen_column = date_column("first_seen", "First seen")
    first_seen_detail = date_column("first_seen", "First seen", compact=False)
    last_seen_detail = date_column("last_seen", "Last seen", compact=False)
    acknowledged_at_detail = date_column("acknowledged_at", "Acknowledged at", compact=False)
    resolved_at_detail = date_column("resolved_at", "Resolved at", compact=False)

    @admin.display(description="Last message")
    def message(self, obj: SystemAlert) -> str:
        return folded(obj.last_message, 60)

    @admin.display(description="Sample record")
    def sample(self, obj: SystemAlert) -> str:
        return folded(obj.sample_record, 24)

    @admin.display(description="Sample record (identities masked)")
    def sample_record_pretty(self, obj: SystemAlert) -> str:
        return format_html("<pre>{}</pre>", obj.sample_record) if obj.sample_record else "-"

    @admin.display(description="In window", ordering="window_count")
    def window_count(self, obj: SystemAlert) -> int:
        return getattr(obj, "window_count", 0)

    @admin.display(description="Status", ordering="acknowledged")
    def open_badge(self, obj: SystemAlert) -> str:
        if obj.is_open:
            return badge("open", "bad")
        if obj.resolved_at and not obj.acknowledged:
            return format_html('<span title="{}">{}</span>', utc_text(obj.resolved_at), badge("resolved", "ok"))
        return badge("acknowledged", "muted")

    def has_acknowledge_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.acknowledge_systemalert")

    @admin.action(description="Acknowledge selected alerts", permissions=["acknowledge"])
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[SystemAlert]) -> None:
        count = alerts_acknowledge(alert_ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"Acknowledged {plural(count, 'alert')}.", messages.SUCCESS)
