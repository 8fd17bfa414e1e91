"""The console's admin site: the product's titles, and the index with a health summary above the app list."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse

from console.context_processors import request_open_alert_count
from integrations.models import Connection
from integrations.selectors import BACKLOG_COUNT_CAP, health_summary

from .display import CONNECTION_TONES, badge, connection_status_badge, when


class ConsoleSite(admin.AdminSite):
    site_header = "Firehose Audience Forwarder"
    site_title = "Firehose Audience Forwarder"
    index_title = "Audiences, connections and System Alerts"
    # The lists (delivery log, System Alerts) need the width on a laptop screen more than a second menu does.
    enable_nav_sidebar = False
    index_template = "admin/health_index.html"

    def index(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        return super().index(request, {"health": health_context(request), **(extra_context or {})})


def health_context(request: HttpRequest) -> dict[str, Any] | None:
    """The index's health summary (integrations.selectors.health_summary) as templates/admin/health_index.html shows
    it, with the open System Alerts for those who may see them. None for a user who may not see connections."""
    user = request.user
    if not (user.has_perm("integrations.view_connection") or user.has_perm("integrations.change_connection")):
        return None
    status = Connection.Status
    health = health_summary()
    totals = {"active": health.active, "paused": health.paused, "faulted": health.faulted}
    summary = {
        **totals,
        "last_delivered_at": health.last_delivered_at,
        "badges": [
            (value, badge(f"{totals[value]} {value}", CONNECTION_TONES[value] if totals[value] else "muted"))
            for value in (status.ACTIVE, status.PAUSED, status.FAULTED)
        ],
        "backlog": f"more than {BACKLOG_COUNT_CAP:,}" if health.backlog > BACKLOG_COUNT_CAP else f"{health.backlog:,}",
        "backlog_count": health.backlog,
        "day": health.day,
        "last_delivery": when(health.last_delivered_at),
        "show_alerts": user.has_perm("integrations.view_systemalert"),
        "worst": [(connection, connection_status_badge(connection)) for connection in health.worst],
    }
    if summary["show_alerts"]:
        open_alerts = request_open_alert_count(request)
        summary["open_alerts"] = open_alerts
        summary["open_alerts_badge"] = badge(open_alerts, "bad" if open_alerts else "muted")
    return summary


def admin_lockout(request: HttpRequest, response: Any = None, credentials: dict | None = None) -> Any:
    """django-axes' answer to a locked-out login (AXES_LOCKOUT_CALLABLE): the admin's login page, with the site's
    header, saying why and for how long, with status 429."""
    from django.conf import settings
    from django.template.response import TemplateResponse

    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    context = {**admin.site.each_context(request), "title": "Locked out", "lockout_minutes": minutes}
    return TemplateResponse(request, "admin/locked_out.html", context, status=429).render()
