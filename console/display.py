"""What every page of the console shows the same way: badges and their tones, dates, durations, long text folded,
identities, and links to other pages (with who may follow them).

Dates in the custom displays all read "2026-11-28 09:21 UTC", with the relative time beside them on detail pages and
as a tooltip in list columns (`when`, `date_column`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.utils.text import Truncator
from django.utils.timesince import timesince, timeuntil

from audiences.models import MembershipChange
from integrations.models import Connection, Delivery, DeliveryAttempt

# Badge tones (integrations/static/integrations/admin.css): ok green, warn orange, bad red, info blue, muted grey.
CONNECTION_TONES = {
    Connection.Status.ACTIVE: "ok",
    Connection.Status.PAUSED: "muted",
    Connection.Status.FAULTED: "bad",
}
DELIVERY_TONES = {
    Delivery.Status.PENDING: "info",
    Delivery.Status.DELIVERED: "ok",
    Delivery.Status.SKIPPED: "muted",
    Delivery.Status.FAILED: "bad",
}
OUTCOME_TONES = {
    DeliveryAttempt.Outcome.DELIVERED: "ok",
    DeliveryAttempt.Outcome.PARTIAL: "warn",
    DeliveryAttempt.Outcome.RETRYABLE: "warn",
    DeliveryAttempt.Outcome.PERMANENT: "bad",
}
KIND_TONES = {
    MembershipChange.Kind.JOINED: "ok",
    MembershipChange.Kind.LEFT: "muted",
    MembershipChange.Kind.IDENTITIES_CHANGED: "info",
    MembershipChange.Kind.AUDIENCE_DELETED: "warn",
}
NO_IDENTITIES = "none (anonymous)"


def plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


def badge(text: object, tone: str) -> str:
    """The coloured status badge used in every list, detail page, confirmation page and the index summary."""
    return format_html('<span class="badge badge-{}">{}</span>', tone, text)


def connection_status_badge(connection: Connection) -> str:
    return badge(connection.get_status_display(), CONNECTION_TONES.get(connection.status, "muted"))


def folded(text: str, length: int = 60) -> str:
    """Long error text folded into <details>: the first words as the summary, all of it when opened."""
    if not text:
        return "-"
    summary = Truncator(text).chars(length)
    if summary == text:
        return text
    return format_html("<details><summary>{}</summary><pre>{}</pre></details>", summary, text)


# --- dates ------------------------------------------------------------------------------------------------------


def utc_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def relative_text(value: datetime, now: datetime | None = None) -> str:
    now = now or timezone.now()
    if abs((now - value).total_seconds()) < 60:
        return "just now"
    if value < now:
        return f"{timesince(value, now, depth=1)} ago"
    return f"in {timeuntil(value, now, depth=1)}"


def when(value: datetime | None, *, compact: bool = False) -> str:
    """One format for every date: "2026-11-28 09:21 UTC (3 minutes ago)". Compact, for list columns: the date alone,
    never wrapped, with the relative time as its tooltip."""
    if value is None:
        return "-"
    if compact:
        return format_html('<span class="nowrap" title="{}">{}</span>', relative_text(value), utc_text(value))
    return format_html('<span class="nowrap">{}</span> ({})', utc_text(value), relative_text(value))


def date_column(field: str, description: str, *, compact: bool = True) -> Callable[[Any, Any], str]:
    """A ModelAdmin display for a date field in the format of `when`: compact in lists, with the relative time on
    detail pages."""

    @admin.display(description=description, ordering=field)
    def display(self: Any, obj: Any) -> str:
        return when(getattr(obj, field), compact=compact)

    return display


def unix_time(timestamp: int) -> str:
    """Unix seconds as the records carry them, with the date they stand for (its relative time as the tooltip)."""
    return format_html(
        '<span class="nowrap">{}</span> ({})', timestamp, when(datetime.fromtimestamp(timestamp, UTC), compact=True)
    )


def duration_text(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min"


# --- identities -------------------------------------------------------------------------------------------------


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


# --- who may see what -------------------------------------------------------------------------------------------


def can_view_configurations(request: HttpRequest) -> bool:
    """Configuration pages hold the credentials: only users with a permission on Configuration reach them."""
    return request.user.has_perm("integrations.view_configuration") or request.user.has_perm(
        "integrations.change_configuration"
    )


def can_view_users(request: HttpRequest) -> bool:
    return request.user.has_perm("audiences.view_user") or request.user.has_perm("audiences.change_user")


def can_view_audiences(request: HttpRequest) -> bool:
    return request.user.has_perm("audiences.view_audience") or request.user.has_perm("audiences.change_audience")


# --- links and their parameters ---------------------------------------------------------------------------------


def admin_link(obj: Any, label: str | None = None) -> str:
    if obj is None:
        return "-"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}" title="{}">{}</a>', url, str(obj), label or str(obj))


def connection_admin_link(connection: Connection) -> str:
    """A connection in the log lists: audience and stream (the region is in the tooltip), linked to its page."""
    return admin_link(connection, f"{connection.audience.name} → {connection.stream_name}")


def page_url(base: str, **params: object) -> str:
    present = {name: value for name, value in params.items() if value not in (None, "")}
    return f"{base}?{urlencode(present)}" if present else base


def user_changes_url(user_pk: int, audience_id: int | None = None) -> str:
    return page_url(reverse("admin:audiences_user_changes", args=[user_pk]), audience=audience_id)


def int_or_none(value: str | None) -> int | None:
    """A keyset or filter parameter: anything but a whole number reads as absent (the first page, no filter)."""
    try:
        return int(value) if value else None
    except ValueError:
        return None
