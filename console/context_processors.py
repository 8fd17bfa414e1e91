"""The open System Alerts count for the red badge in every admin page's header (templates/admin/base_site.html)."""

from django.http import HttpRequest

from integrations.selectors import open_alert_count


def request_open_alert_count(request: HttpRequest) -> int:
    """Counted once per request: the header's badge and the admin index's summary show the same number."""
    if not hasattr(request, "_open_alert_count"):
        request._open_alert_count = open_alert_count()
    return request._open_alert_count


def open_alerts(request: HttpRequest) -> dict:
    """For staff on admin pages only, and counted only when a template shows it (a callable)."""
    user = getattr(request, "user", None)
    if not request.path.startswith("/admin/") or user is None or not user.is_active or not user.is_staff:
        return {}
    if not user.has_perm("integrations.view_systemalert"):
        return {}
    return {"open_alert_count": lambda: request_open_alert_count(request)}
