"""The columns of the connection list and the read-only fields of a connection's page: its health (status, backlog,
the last 24 hours, resync progress, open alerts), the delivery engine's state and the IAM policy."""

from __future__ import annotations

import json

from django.contrib import admin
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator

from audiences.identities import IDENTITY_LABELS
from integrations.models import Connection
from integrations.selectors import (
    BACKLOG_COUNT_CAP,
    connection_backlog_capped,
    connection_iam_policy,
    connection_open_alert_count,
    resync_progress,
)
from integrations.stats import ConnectionDay, connection_last_24_hours

from .chart import delivery_chart_svg
from .display import badge, connection_status_badge, date_column, duration_text, folded, plural, when


class ConnectionFields:
    """The displays of ConnectionAdmin (console.connections)."""

    last_delivery = date_column("last_delivered_at", "Last delivery")
    last_delivery_detail = date_column("last_delivered_at", "Last delivery", compact=False)
    last_error_at_detail = date_column("last_error_at", "Last error at", compact=False)
    last_tested = date_column("last_tested_at", "Last tested", compact=False)

    @admin.display(description="Configuration")
    def configuration_name(self, obj: Connection) -> str:
        return obj.configuration.name

    @admin.display(description="Identities To Exclude")
    def excluded_identities(self, obj: Connection) -> str:
        return ", ".join(IDENTITY_LABELS.get(key, key) for key in obj.identities_to_exclude or []) or "none"

    @admin.display(description="Stream", ordering="stream_name")
    def stream(self, obj: Connection) -> str:
        return format_html('{} <span class="quiet nowrap">({})</span>', obj.stream_name, obj.region)

    @admin.display(description="Stream ARN")
    def stream_arn_text(self, obj: Connection) -> str:
        return obj.stream_arn or "- (found by Test connection)"

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Connection) -> str:
        return connection_status_badge(obj)

    @admin.display(description="Backlog", ordering="backlog")
    def backlog(self, obj: Connection) -> str:
        backlog = getattr(obj, "backlog", None)
        backlog = connection_backlog_capped(obj.pk) if backlog is None else backlog
        return f"> {BACKLOG_COUNT_CAP:,}" if backlog > BACKLOG_COUNT_CAP else f"{backlog:,}"

    @admin.display(description="Delivered")
    def delivered(self, obj: Connection) -> int:
        return obj.delivered_count

    @admin.display(description="Failed")
    def failed(self, obj: Connection) -> int:
        return obj.failed_count

    @admin.display(description="Anonymous users skipped")
    def anonymous_skipped(self, obj: Connection) -> int:
        return obj.anonymous_skipped_count

    @admin.display(description="Last error")
    def last_error_short(self, obj: Connection) -> str:
        if not obj.last_error:
            return "-"
        return format_html(
            '<span title="{}">{}</span>', Truncator(obj.last_error).chars(500), Truncator(obj.last_error).chars(48)
        )

    @admin.display(description="Last error")
    def last_error_text(self, obj: Connection) -> str:
        return folded(obj.last_error, 120)

    @admin.display(description="Next attempt at")
    def next_attempt(self, obj: Connection) -> str:
        if obj.next_attempt_at is None:
            return "-"
        if obj.next_attempt_at <= timezone.now():
            return when(obj.next_attempt_at)
        return format_html("{}: nothing is sent before then (set after a failed request)", when(obj.next_attempt_at))

    @admin.display(description="Send rate")
    def send_rate_text(self, obj: Connection) -> str:
        share = f"{obj.send_rate:.0%} of the limits"
        limits = f"{obj.records_per_second_limit:,} records/s, {obj.bytes_per_second_limit / 1024 / 1024:g} MiB/s"
        reason = " (lowered after throttling; climbs back as batches go through)" if obj.send_rate < 1 else ""
        return f"{share}: {limits}{reason}"

    @admin.display(description="Resync")
    def resync_progress(self, obj: Connection) -> str:
        """Refreshed by integrations/connection.js while it runs, without reloading the page."""
        progress = resync_progress(obj)
        url = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_progress", args=[obj.pk])
        bar = ""
        if progress["state"] != "idle":
            planned = max(progress["sent"] + progress["remaining"], 1)
            bar = format_html('<progress max="{}" value="{}"></progress> ', planned, progress["sent"])
        requested = format_html(" (requested {})", when(obj.resync_requested_at)) if obj.resync_requested_at else ""
        return format_html(
            '<div id="resync-progress" data-state="{}" data-url="{}" aria-live="polite">{}'
            '<span class="progress-text">{}</span>{}</div>',
            progress["state"],
            url,
            bar,
            progress["text"],
            requested,
        )

    @admin.display(description="Status")
    def status_detail(self, obj: Connection) -> str:
        return format_html('<span id="connection-status">{}</span>', connection_status_badge(obj))

    @admin.display(description="Backlog")
    def backlog_detail(self, obj: Connection) -> str:
        count = connection_backlog_capped(obj.pk)
        text = f"more than {BACKLOG_COUNT_CAP:,}" if count > BACKLOG_COUNT_CAP else f"{count:,}"
        url = reverse("admin:integrations_delivery_changelist")
        return format_html(
            '<span id="connection-backlog">{}</span> record{} pending (<a href="{}?connection__id__exact={}&amp;'
            'status__exact=1">see them</a>)',
            text,
            "" if count == 1 else "s",
            url,
            obj.pk,
        )

    def _day(self, obj: Connection) -> ConnectionDay:
        if not hasattr(obj, "_last_24_hours"):
            obj._last_24_hours = connection_last_24_hours(obj.pk)
        return obj._last_24_hours

    @admin.display(description="Last 24 hours")
    def last_24_hours(self, obj: Connection) -> str:
        day = self._day(obj)
        summary = format_html(
            '<div class="chart-legend"><span><span class="swatch delivered-swatch" style="background:#2e7d32">'
            '</span>{} delivered</span><span><span class="swatch" style="background:#c62828"></span>{} failed tries'
            "</span><span>{} retried</span></div>",
            f"{day.delivered:,}",
            f"{day.failed:,}",
            f"{day.retried:,}",
        )
        return format_html("{}{}", summary, delivery_chart_svg(day))

    @admin.display(description="Delivery latency, p95 (24 h)")
    def latency_p95(self, obj: Connection) -> str:
        p95 = self._day(obj).p95_latency_seconds
        if p95 is None:
            return "- (nothing delivered in the last 24 hours)"
        return f"{duration_text(p95)} from the change's acceptance to Firehose's answer"

    @admin.display(description="Delivery log")
    def delivery_log(self, obj: Connection) -> str:
        url = reverse("admin:integrations_delivery_changelist")
        attempts = reverse("admin:integrations_deliveryattempt_changelist")
        return format_html(
            '<a href="{}?connection__id__exact={}">Deliveries</a> · <a href="{}?connection__id__exact={}&amp;'
            'status__exact=4">failed ones</a> · <a href="{}?connection__id__exact={}">Requests to Firehose</a>',
            url,
            obj.pk,
            url,
            obj.pk,
            attempts,
            obj.pk,
        )

    @admin.display(description="Open alerts")
    def open_alerts(self, obj: Connection) -> str:
        count = connection_open_alert_count(obj)
        url = reverse("admin:integrations_systemalert_changelist")
        if not count:
            return format_html('none (<a href="{}?connection__id__exact={}">alert history</a>)', url, obj.pk)
        return format_html(
            '<a href="{}?connection__id__exact={}">{}</a>', url, obj.pk, badge(plural(count, "open alert"), "bad")
        )

    @admin.display(description="IAM policy")
    def iam_policy(self, obj: Connection) -> str:
        return format_html(
            '<div class="iam-policy"><button type="button" class="button copy-button" '
            'data-copy-target="iam-policy-json">Copy</button><pre id="iam-policy-json">{}</pre></div>',
            json.dumps(connection_iam_policy(obj), indent=2),
        )
