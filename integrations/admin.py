"""Admin for Configuration Settings, Connection Settings, System Alerts and the delivery logs.

Every write goes through a service (integrations.services, integrations.alerts); the admin only renders and asks.

Roles (the groups made by migration 0003_roles_groups): the connection actions need the custom permission
`integrations.operate_connection` and acknowledging needs `integrations.acknowledge_systemalert`, not the change
permission, so that Operators run them from a view-only changelist or change page. Nobody without a permission on
Configuration sees a link to, or any field of, a configuration beyond its name.

Dates in the custom displays all read "2026-11-28 09:21 UTC", with the relative time beside them on detail pages and
as a tooltip in list columns (`when`, `date_column`). The admin index carries a health summary (`health_summary`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import display_for_value, unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection as db_connection
from django.db.models import Count, F, Max, Prefetch, Q, QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator
from django.utils.timesince import timesince, timeuntil
from django.views.decorators.debug import sensitive_post_parameters

from audiences.identities import IDENTITY_LABELS
from integrations.configurations import configuration_create, configuration_update
from integrations.connections import (
    connection_create,
    connection_delete,
    connection_pause,
    connection_resume,
    connection_resync,
    connection_test,
    connection_update,
    deliveries_retry_failed,
)
from project.admin_tools import ReadOnlyAdmin, choice_filter

from .alerts import alerts_acknowledge, alerts_acknowledge_all
from .context_processors import request_open_alert_count
from .forms import SECRET_FIELD, ConfigurationAdminForm, ConnectionAdminForm
from .models import OPEN_ALERTS, Configuration, Connection, Delivery, DeliveryAttempt, DeliveryFailure, SystemAlert
from .selectors import (
    ALERT_WINDOWS,
    BACKLOG_COUNT_CAP,
    DEFAULT_ALERT_WINDOW,
    alert_ranking,
    alerts_with_window_count,
    connection_backlog_capped,
    connection_iam_policy,
    connections_with_backlog,
    connections_worst_first,
    deliveries_backlog_capped,
    resync_progress,
)
from .stats import ConnectionDay, connection_last_24_hours, deliveries_last_24_hours

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
KIND_SHORT = {Delivery.Kind.CHANGE: "change", Delivery.Kind.RESYNC: "resync", Delivery.Kind.AUDIENCE_DELETED: "deleted"}
OUTCOME_TONES = {
    DeliveryAttempt.Outcome.DELIVERED: "ok",
    DeliveryAttempt.Outcome.PARTIAL: "warn",
    DeliveryAttempt.Outcome.RETRYABLE: "warn",
    DeliveryAttempt.Outcome.PERMANENT: "bad",
}


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


def badge(text: object, tone: str) -> str:
    """The coloured status badge used in every list, detail page, confirmation page and the index summary."""
    return format_html('<span class="badge badge-{}">{}</span>', tone, text)


def connection_status_badge(connection: Connection) -> str:
    return badge(connection.get_status_display(), CONNECTION_TONES.get(connection.status, "muted"))


def _folded(text: str, length: int = 60) -> str:
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


def duration_text(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min"


def delivery_chart_svg(day: ConnectionDay) -> str:
    """Delivered (green) and failed (red) records per hour over the last 24 hours, as a server-rendered SVG bar chart:
    no script, no request of its own. Each bar's tooltip gives the hour and the numbers."""
    slot = CHART_WIDTH / len(day.points)
    plot = CHART_HEIGHT - CHART_TOP - 14
    base = CHART_TOP + plot
    peak = max([point.delivered + point.failed for point in day.points] + [1])
    parts = []
    for index, point in enumerate(day.points):
        x = f"{index * slot + 1:.1f}"
        delivered = plot * point.delivered / peak
        failed = plot * point.failed / peak
        parts.append(
            format_html(
                '<g><title>{}</title><rect class="delivered" x="{}" y="{}" width="{}" height="{}"/>'
                '<rect class="failed" x="{}" y="{}" width="{}" height="{}"/></g>',
                f"{point.hour:%H}:00 UTC: {point.delivered:,} delivered, {point.failed:,} failed",
                x,
                f"{base - delivered:.1f}",
                f"{slot - 2:.1f}",
                f"{delivered:.1f}",
                x,
                f"{base - delivered - failed:.1f}",
                f"{slot - 2:.1f}",
                f"{failed:.1f}",
            )  # fmt: skip
        )
        if index % 6 == 0:
            parts.append(format_html('<text x="{}" y="{}">{}:00</text>', x, CHART_HEIGHT - 2, f"{point.hour:%H}"))
    parts.append(format_html('<text x="{}" y="{}">now</text>', CHART_WIDTH - 22, CHART_HEIGHT - 2))
    return format_html(
        '<svg class="delivery-chart" role="img" aria-label="{}" width="{}" height="{}" viewBox="0 0 {} {}">'
        '<line x1="0" y1="{}" x2="{}" y2="{}"/><text x="0" y="10">peak: {} records in an hour (UTC)</text>{}</svg>',
        f"Delivered and failed records per hour, last 24 hours: {day.delivered:,} delivered, {day.failed:,} failed",
        CHART_WIDTH, CHART_HEIGHT, CHART_WIDTH, CHART_HEIGHT,
        f"{base:.1f}", CHART_WIDTH, f"{base:.1f}",
        f"{peak:,}",
        mark_safe("".join(parts)),
    )  # fmt: skip


def can_view_configurations(request: HttpRequest) -> bool:
    """Configuration pages hold the credentials: only users with a permission on Configuration reach them."""
    return request.user.has_perm("integrations.view_configuration") or request.user.has_perm(
        "integrations.change_configuration"
    )


def _admin_link(obj: Any, label: str | None = None) -> str:
    if obj is None:
        return "-"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}" title="{}">{}</a>', url, str(obj), label or str(obj))


def _connection_link(connection: Connection) -> str:
    """A connection in the log lists: audience and stream (the region is in the tooltip), linked to its page."""
    return _admin_link(connection, f"{connection.audience.name} → {connection.stream_name}")


class LogPaginator(Paginator):
    """For the delivery logs, which grow to tens of millions of rows: never a COUNT(*) over the table. An unfiltered
    list on PostgreSQL takes the planner's row estimate; any other list counts at most COUNT_CAP + 1 rows (the pages
    go that far, and the page says "more than"). Small tables count exactly."""

    ESTIMATE_FROM = 100_000
    COUNT_CAP = 10_000
    estimated = False  # set when `count` is the planner's estimate

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        if db_connection.vendor == "postgresql" and not queryset.query.where:
            with db_connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [queryset.model._meta.db_table]
                )
                row = cursor.fetchone()
            if row and row[0] >= self.ESTIMATE_FROM:
                self.estimated = True
                return row[0]
        return queryset.order_by()[: self.COUNT_CAP + 1].count()

    @property
    def capped(self) -> bool:
        return not self.estimated and self.count > self.COUNT_CAP


class ConnectionListFilter(admin.RelatedFieldListFilter):
    """Filter by connection, labelled with audience names loaded in one query (not one per connection)."""

    def field_choices(self, field, request, model_admin):
        return [(c.pk, str(c)) for c in Connection.objects.select_related("audience").order_by("pk")]


# --- the admin index: health summary ----------------------------------------------------------------------------


def health_summary(request: HttpRequest) -> dict[str, Any] | None:
    """Connections by status, open System Alerts, the last 24 hours' deliveries, the backlog and the connections that
    most need a look, for the admin index.

    A fixed number of queries whatever the size of the tables: an aggregate over the connections, a count of the
    open alert rows, a sum over the last 24 hourly stats rows per connection, a capped count of the pending
    deliveries, and one query for the worst connections. None for a user who may not see connections."""
    user = request.user
    if not (user.has_perm("integrations.view_connection") or user.has_perm("integrations.change_connection")):
        return None
    status = Connection.Status
    totals = Connection.objects.aggregate(
        active=Count("pk", filter=Q(status=status.ACTIVE)),
        paused=Count("pk", filter=Q(status=status.PAUSED)),
        faulted=Count("pk", filter=Q(status=status.FAULTED)),
        last_delivered_at=Max("last_delivered_at"),
    )
    backlog = deliveries_backlog_capped()
    since = timezone.now() - timedelta(hours=24)
    summary = {
        **totals,
        "badges": [
            (value, badge(f"{totals[value]} {value}", CONNECTION_TONES[value] if totals[value] else "muted"))
            for value in (status.ACTIVE, status.PAUSED, status.FAULTED)
        ],
        "backlog": f"more than {BACKLOG_COUNT_CAP:,}" if backlog > BACKLOG_COUNT_CAP else f"{backlog:,}",
        "backlog_count": backlog,
        "day": deliveries_last_24_hours(),
        "last_delivery": when(totals["last_delivered_at"]),
        "show_alerts": user.has_perm("integrations.view_systemalert"),
        "worst": [
            (connection, connection_status_badge(connection))
            for connection in connections_worst_first(since=since)
            if connection.status != status.ACTIVE
            or connection.open_alerts
            or connection.failed_recently
            or connection.backlog
        ],
    }
    if summary["show_alerts"]:
        open_alerts = request_open_alert_count(request)
        summary["open_alerts"] = open_alerts
        summary["open_alerts_badge"] = badge(open_alerts, "bad" if open_alerts else "muted")
    return summary


def _index_with_health(request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
    return _site_index(request, {"health": health_summary(request), **(extra_context or {})})


# The default site's index, wrapped once (admin modules are imported once, by autodiscover, before the URLconf builds
# the site's URLs from `admin.site.index`), with a template that shows the summary above the app list.
if admin.site.index_template is None:
    _site_index = admin.site.index
    admin.site.index = _index_with_health
    admin.site.index_template = "admin/health_index.html"


# --- Configuration Settings -------------------------------------------------------------------------------------


@admin.register(Configuration)
class ConfigurationAdmin(admin.ModelAdmin):
    form = ConfigurationAdminForm
    list_display = ["name", "access_key", "send_remove_on_identity_change", "endpoint_url", "connections", "updated"]
    search_fields = ["name"]

    def get_fieldsets(self, request: HttpRequest, obj: Configuration | None = None):
        settings = ["name", "access_key_id", SECRET_FIELD, "send_remove_on_identity_change", "endpoint_url"]
        if obj is None:
            return [("Configuration Settings", {"fields": settings})]
        return [
            ("Configuration Settings", {"fields": settings}),
            ("Used by", {"fields": ["connection_links", "created", "updated_detail"]}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Configuration | None = None):
        return ["connection_links", "created", "updated_detail"] if obj else []

    def get_queryset(self, request: HttpRequest) -> QuerySet[Configuration]:
        return super().get_queryset(request).annotate(connection_count=Count("connections"))

    @method_decorator(sensitive_post_parameters(SECRET_FIELD))
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: Configuration, form: ConfigurationAdminForm, change: bool) -> None:
        secret = form.cleaned_data[SECRET_FIELD]
        if change:
            # A blank secret keeps the stored one.
            changed = {name: form.cleaned_data[name] for name in form.changed_data if name != SECRET_FIELD}
            configuration_update(configuration=obj, secret_access_key=secret, **changed)
            return
        created = configuration_create(
            name=obj.name,
            access_key_id=obj.access_key_id,
            secret_access_key=secret,
            send_remove_on_identity_change=obj.send_remove_on_identity_change,
            endpoint_url=obj.endpoint_url,
        )
        obj.pk = created.pk
        obj.refresh_from_db()
        obj._state.adding = False

    updated = date_column("updated_at", "Updated")
    created = date_column("created_at", "Created", compact=False)
    updated_detail = date_column("updated_at", "Updated", compact=False)

    @admin.display(description="Access Key ID")
    def access_key(self, obj: Configuration) -> str:
        return obj.access_key_hint

    @admin.display(description="Connections", ordering="connection_count")
    def connections(self, obj: Configuration) -> int:
        return obj.connection_count

    @admin.display(description="Connections")
    def connection_links(self, obj: Configuration) -> str:
        connections = obj.connections.select_related("audience").order_by("pk")
        return format_html_join(mark_safe("<br>"), "{}", ((_admin_link(c),) for c in connections)) or "-"


# --- Connection Settings ----------------------------------------------------------------------------------------

CONNECTION_SETTINGS = ["audience", "configuration", "stream_name", "region", "append_newline"]
CONNECTION_IDENTITIES = [
    "send_anonymous_users",
    "forward_email_addresses",
    "forward_customer_ids",
    "forward_idfas",
    "forward_google_advertising_ids",
    "identities_to_exclude",
]
CONNECTION_STATUS = [
    "status_detail",
    "backlog_detail",
    "last_delivery_detail",
    "last_error_text",
    "last_error_at_detail",
    "last_24_hours",
    "latency_p95",
    "resync_progress",
    "open_alerts",
    "delivery_log",
]
CONNECTION_ENGINE = [
    "delivered",
    "failed",
    "anonymous_skipped",
    "consecutive_failures",
    "next_attempt",
    "batch_permitted",
    "send_rate_text",
]
CONNECTION_RATE = ["max_records_per_second", "max_bytes_per_second"]
CONNECTION_STREAM = ["stream_arn_text", "last_tested", "iam_policy"]
RATE_DESCRIPTION = (
    "Records are sent no faster than these limits, shared by all the workers delivering this connection. "
    "Blank means the stream's Direct PUT quota for its region. When Firehose throttles anyway, the rate in use halves, "
    "then climbs back step by step."
)
IDENTITIES_DESCRIPTION = (
    "An identity is forwarded only if its Forward toggle is on <strong>and</strong> it is not ticked under "
    "Identities To Exclude. Email Address, Customer ID, IDFA and GAID have both settings; every other identity "
    "only the exclusion."
)
OPERATIONS = ("test", "resync", "pause", "resume", "retry_failed")
RETRY_FAILED_LIMIT = 100_000  # deliveries queued again by one Retry failed
CHART_WIDTH, CHART_HEIGHT, CHART_TOP = 480, 96, 12


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    form = ConnectionAdminForm
    list_display = ["status_badge", "backlog", "audience", "stream", "last_delivery", "last_error_short"]
    list_display_links = ["stream"]
    list_filter = ["status", "region", "configuration"]
    list_select_related = ["audience", "configuration"]
    search_fields = ["stream_name", "audience__internal_name", "audience__external_name"]
    actions = ["test_connection", "resync", "pause", "resume"]

    class Media:
        js = ["integrations/connection.js"]

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Test, resync, pause and resume: the Operators' permission (superusers have every permission)."""
        return request.user.has_perm(f"{self.opts.app_label}.operate_connection")

    def get_fieldsets(self, request: HttpRequest, obj: Connection | None = None):
        fields, identities = CONNECTION_SETTINGS, CONNECTION_IDENTITIES
        if obj is not None and not self.has_change_permission(request, obj):
            identities = ["excluded_identities" if name == "identities_to_exclude" else name for name in identities]
            if not can_view_configurations(request):
                # A read-only field would link to the configuration's page; its name is all this user may see.
                fields = ["configuration_name" if name == "configuration" else name for name in fields]
        settings = [
            ("Connection Settings", {"fields": fields}),
            ("Identities", {"fields": identities, "description": IDENTITIES_DESCRIPTION}),
            ("Rate limit", {"fields": CONNECTION_RATE, "description": RATE_DESCRIPTION}),
        ]
        if obj is None:
            return settings
        return [
            ("Health", {"fields": CONNECTION_STATUS}),
            *settings,
            ("Delivery engine", {"fields": CONNECTION_ENGINE, "classes": ["collapse"]}),
            (
                "Stream and IAM policy",
                {
                    "fields": CONNECTION_STREAM,
                    "description": "Attach this policy to the IAM user of the configuration. The account id is "
                    "filled in from the stream ARN once Test connection has found the stream.",
                },
            ),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Connection | None = None):
        if obj is None:
            return []
        # The audience stays: its backlog belongs to it. Status changes through the actions.
        return ["audience", *CONNECTION_STATUS, *CONNECTION_ENGINE, *CONNECTION_STREAM]

    def formfield_for_dbfield(self, db_field, request: HttpRequest, **kwargs):
        """A configuration is shared by many connections: it is chosen here, never added, edited or deleted from
        this form (only viewed, by those who may)."""
        formfield = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "configuration" and formfield is not None:
            widget = formfield.widget
            widget.can_add_related = widget.can_change_related = widget.can_delete_related = False
        return formfield

    def get_queryset(self, request: HttpRequest) -> QuerySet[Connection]:
        return connections_with_backlog(super().get_queryset(request))

    def changelist_view(self, request, extra_context=None):
        context = {
            "faulted_count": Connection.objects.filter(status=Connection.Status.FAULTED).count(),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        can_operate = self.has_operate_permission(request)
        has_failed = (
            can_operate
            and object_id.isdigit()
            and Delivery.objects.filter(connection_id=object_id, status=Delivery.Status.FAILED).exists()
        )
        context = {"can_operate": can_operate, "has_failed_deliveries": has_failed, **(extra_context or {})}
        return super().change_view(request, object_id, form_url, context)

    def save_model(self, request: HttpRequest, obj: Connection, form: ConnectionAdminForm, change: bool) -> None:
        settings = form.settings()
        if change:
            connection_update(connection=obj, **{name: settings[name] for name in form.changed_data})
            return
        # Through the service, so that an active connection starts its initial sync.
        created = connection_create(audience=obj.audience, configuration=obj.configuration, **settings)
        obj.pk = created.pk
        obj.refresh_from_db()
        obj._state.adding = False

    def get_deleted_objects(self, objs, request):
        """At most 10,001 rows of each kind counted, instead of Django's walk over every delivery (a busy connection
        has millions of them): the connection disappears at once, and its deliveries, attempts, counters and alerts
        are purged in the background, in batches."""
        connections = list(objs)
        ids = [connection.pk for connection in connections]

        def capped(queryset) -> str:
            count = queryset.order_by()[: BACKLOG_COUNT_CAP + 1].count()
            return f"more than {BACKLOG_COUNT_CAP:,}" if count > BACKLOG_COUNT_CAP else f"{count:,}"

        backlog = Delivery.objects.filter(connection_id__in=ids, status=Delivery.Status.PENDING)
        model_count = {
            Connection._meta.verbose_name_plural: len(connections),
            Delivery._meta.verbose_name_plural: capped(Delivery.objects.filter(connection_id__in=ids)),
            DeliveryAttempt._meta.verbose_name_plural: capped(DeliveryAttempt.objects.filter(connection_id__in=ids)),
            SystemAlert._meta.verbose_name_plural: capped(SystemAlert.objects.filter(connection_id__in=ids)),
        }
        summary = [str(connection) for connection in connections]
        if backlog.exists():
            summary.append(f"{capped(backlog)} records still waiting in the backlog, which will never be sent")
        summary.append("Its deliveries, attempts and alerts are deleted in the background, a few thousand at a time.")
        perms_needed = set() if self.has_delete_permission(request) else {Connection._meta.verbose_name}
        return summary, model_count, perms_needed, []

    def delete_model(self, request: HttpRequest, obj: Connection) -> None:
        connection_delete(connection=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        for connection in queryset.order_by("pk"):
            connection_delete(connection=connection)

    # --- the change page's buttons: Test connection, Resync, Pause and Resume for this one connection ---

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        operations = [
            path(
                f"<path:object_id>/{operation}/",
                self.admin_site.admin_view(self.operate_view),
                {"operation": operation},
                name=f"{prefix}_{operation}",
            )
            for operation in OPERATIONS
        ]
        progress = path(
            "<path:object_id>/progress/",
            self.admin_site.admin_view(self.progress_view),
            name=f"{prefix}_progress",
        )
        return [progress, *operations, *super().get_urls()]

    def progress_view(self, request: HttpRequest, object_id: str) -> JsonResponse:
        """The resync progress as JSON, for the connection page's script (integrations/connection.js)."""
        object_id = unquote(object_id)
        connection = Connection.objects.filter(pk=object_id).first() if object_id.isdigit() else None
        if connection is None or not self.has_view_or_change_permission(request, connection):
            raise Http404
        return JsonResponse(resync_progress(connection))

    def operate_view(self, request: HttpRequest, object_id: str, operation: str) -> HttpResponse:
        """Runs one operation on one connection and goes back to its change page with a message. Test, pause, resume
        and retry failed take a POST; resync first shows its confirmation page (GET) and runs once confirmed."""
        if not self.has_operate_permission(request):
            raise PermissionDenied
        connection = self.get_object(request, unquote(object_id))
        if connection is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        queryset = Connection.objects.filter(pk=connection.pk)
        if operation == "resync" and request.POST.get("post") != "yes":
            return self._resync_confirmation(request, [connection], original=connection)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if operation == "test":
            self.test_connection(request, queryset)
        elif operation == "resync":
            self._resync_run(request, [connection])
        elif operation == "pause":
            self.pause(request, queryset)
        elif operation == "retry_failed":
            queued = deliveries_retry_failed(connection=connection)
            self.log_change(request, connection, f"Queued {queued} failed deliveries again.")
            self.message_user(
                request,
                f"Queued {_plural(queued, 'failed delivery', 'failed deliveries')} again: they are sent after the "
                "current backlog."
                if queued
                else "No failed deliveries to retry.",
                messages.SUCCESS if queued else messages.INFO,
            )
        else:
            self.resume(request, queryset)
        return HttpResponseRedirect(
            reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[connection.pk])
        )

    # --- columns and read-only fields ---

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
        return _folded(obj.last_error, 120)

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
        count = obj.alerts.filter(OPEN_ALERTS).count()
        url = reverse("admin:integrations_systemalert_changelist")
        if not count:
            return format_html('none (<a href="{}?connection__id__exact={}">alert history</a>)', url, obj.pk)
        return format_html(
            '<a href="{}?connection__id__exact={}">{}</a>', url, obj.pk, badge(_plural(count, "open alert"), "bad")
        )

    @admin.display(description="IAM policy")
    def iam_policy(self, obj: Connection) -> str:
        return format_html(
            '<div class="iam-policy"><button type="button" class="button copy-button" '
            'data-copy-target="iam-policy-json">Copy</button><pre id="iam-policy-json">{}</pre></div>',
            json.dumps(connection_iam_policy(obj), indent=2),
        )

    # --- actions ---

    @admin.action(description="Test connection (DescribeDeliveryStream)", permissions=["operate"])
    def test_connection(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        for connection in queryset.select_related("configuration", "audience"):
            result = connection_test(connection=connection)
            if result.ok:
                self.message_user(
                    request,
                    f"{connection}: the stream is {result.stream_status}. ARN: {result.stream_arn}",
                    messages.SUCCESS,
                )
            elif result.stream_arn:
                self.message_user(request, f"{connection}: {result.error} ARN: {result.stream_arn}", messages.WARNING)
            else:
                self.message_user(request, f"{connection}: the test failed. {result.error}", messages.ERROR)

    @admin.action(description="Resync selected connections (send every current member again)", permissions=["operate"])
    def resync(self, request: HttpRequest, queryset: QuerySet[Connection]) -> HttpResponse | None:
        connections = list(queryset.select_related("audience"))
        if request.POST.get("post") == "yes":
            self._resync_run(request, connections)
            return None
        return self._resync_confirmation(request, connections)

    def _resync_run(self, request: HttpRequest, connections: list[Connection]) -> None:
        started = skipped = 0
        for connection in connections:
            if connection.audience.is_deleted:
                skipped += 1
                continue
            connection_resync(connection=connection)
            self.log_change(request, connection, "Resync started.")
            started += 1
        if started:
            self.message_user(
                request,
                f"Resync started on {_plural(started, 'connection')}: every current member is sent again "
                "after the backlog.",
                messages.SUCCESS,
            )
        if skipped:
            self.message_user(
                request, f"Skipped {_plural(skipped, 'connection')} of a deleted audience.", messages.WARNING
            )

    def _resync_confirmation(
        self, request: HttpRequest, connections: list[Connection], original: Connection | None = None
    ) -> TemplateResponse:
        """Like delete_selected: nothing runs until the page is posted back with post=yes."""
        context = {
            **self.admin_site.each_context(request),
            "title": "Resync connections" if original is None else "Resync connection",
            "subtitle": None,
            "opts": self.opts,
            "original": original,
            "rows": [(connection, connection_status_badge(connection)) for connection in connections],
            "connections": connections,
            "member_total": sum(c.audience.member_count for c in connections if not c.audience.is_deleted),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "action_name": "resync",
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/integrations/connection/resync_confirmation.html", context)

    @admin.action(description="Pause selected connections", permissions=["operate"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        self._set_status(
            request, queryset, connection_pause, Connection.Status.PAUSED, "Paused",
            "changes accumulate and nothing is sent", "already paused",
        )  # fmt: skip

    @admin.action(description="Resume selected connections (send the backlog)", permissions=["operate"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        self._set_status(
            request, queryset, connection_resume, Connection.Status.ACTIVE, "Resumed",
            "the backlog is sent in order", "already active",
        )  # fmt: skip

    def _set_status(self, request, queryset, service, status, verb: str, effect: str, already: str) -> None:
        changed = 0
        for connection in queryset.exclude(status=status):
            service(connection=connection)
            self.log_change(request, connection, f"{verb}.")
            changed += 1
        unchanged = queryset.count() - changed
        message = f"{verb} {_plural(changed, 'connection')}: {effect}."
        if unchanged:
            message += f" {_plural(unchanged, 'connection was', 'connections were')} {already}."
        self.message_user(request, message, messages.SUCCESS if changed else messages.INFO)


# --- System Alerts ----------------------------------------------------------------------------------------------


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


class EngineLogAdmin(ReadOnlyAdmin):
    """Alerts, deliveries and attempts: read-only, each row linked to its connection."""

    @admin.display(description="Connection", ordering="connection")
    def connection_link(self, obj: SystemAlert | Delivery | DeliveryAttempt) -> str:
        return _connection_link(obj.connection)


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
        connection = (
            Connection.objects.select_related("audience").filter(pk=connection_id).first()
            if connection_id.isdigit()
            else None
        )
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
        self.message_user(request, f"Acknowledged {_plural(count, 'alert')}.", messages.SUCCESS)
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
        return _folded(obj.last_message, 60)

    @admin.display(description="Sample record")
    def sample(self, obj: SystemAlert) -> str:
        return _folded(obj.sample_record, 24)

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
        self.message_user(request, f"Acknowledged {_plural(count, 'alert')}.", messages.SUCCESS)


# --- delivery logs ----------------------------------------------------------------------------------------------


class UserIdFilter(admin.SimpleListFilter):
    """The deliveries of one user, by the user id the upstream systems know (its unique index answers)."""

    title = "user"
    parameter_name = "user_id"
    template = "admin/integrations/text_filter.html"

    def lookups(self, request, model_admin):
        return [("", "")]  # a text input (the template), not a list of every user

    def choices(self, changelist):
        """One choice: the changelist's other parameters, kept as hidden fields of the text input's form."""
        hidden = [
            (name, value)
            for name, values in changelist.params.items()
            if name not in (self.parameter_name, "p")
            for value in (values if isinstance(values, list) else [values])
        ]
        yield {"selected": bool(self.value()), "hidden": hidden, "value": self.value() or ""}

    def queryset(self, request, queryset):
        value = (self.value() or "").strip()
        if not value:
            return queryset
        return queryset.filter(user__external_id=value)


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


@admin.register(Delivery)
class DeliveryAdmin(EngineLogAdmin):
    """The delivery log: one row per record to send, newest first, with the attempts that carried it (the failed
    tries of DeliveryFailure, then the last attempt), filterable by connection, status, user and time."""

    list_display = [
        "delivery_id",
        "status_badge",
        "created",
        "connection_link",
        "user_link",
        "kind_short",
        "attempt_list",
    ]
    list_filter = ["status", ("connection", ConnectionListFilter), UserIdFilter, time_filter("created_at"), "kind"]
    list_select_related = ["connection__audience", "user", "last_attempt"]
    actions = ["retry_failed"]
    ordering = ["-id"]
    show_full_result_count = False
    paginator = LogPaginator
    list_per_page = 100
    fields = [
        "connection",
        "kind",
        "status_badge",
        "user",
        "member",
        "uses_previous_identities",
        "record_timestamp",
        "change",
        "attempts",
        "attempt_list",
        "next_attempt",
        "error_text",
        "created_detail",
        "delivered_detail",
    ]

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "Delivery log", **(extra_context or {})})

    def get_list_display(self, request: HttpRequest):
        """One connection's log (the connection filter) has no connection column."""
        if "connection__id__exact" in request.GET:
            return [name for name in self.list_display if name != "connection_link"]
        return self.list_display

    def get_queryset(self, request: HttpRequest) -> QuerySet[Delivery]:
        failures = DeliveryFailure.objects.select_related("attempt").order_by("pk")
        return super().get_queryset(request).prefetch_related(Prefetch("failures", queryset=failures))

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("integrations.operate_connection")

    @admin.action(description="Retry failed deliveries (queue them again)", permissions=["operate"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        """Like Svix's Recover Failed: the selected deliveries that failed are queued again, connection by
        connection; the others are left as they are."""
        failed = queryset.filter(status=Delivery.Status.FAILED).order_by()
        by_connection: dict[int, list[int]] = {}
        for connection_id, pk in failed.values_list("connection_id", "pk")[: RETRY_FAILED_LIMIT + 1]:
            by_connection.setdefault(connection_id, []).append(pk)
        queued = 0
        for connection in Connection.objects.filter(pk__in=by_connection):
            queued += deliveries_retry_failed(connection=connection, delivery_ids=by_connection[connection.pk])
        if not queued:
            self.message_user(request, "None of the selected deliveries had failed: nothing to retry.", messages.INFO)
            return
        self.message_user(
            request,
            f"Queued {_plural(queued, 'failed delivery', 'failed deliveries')} again on "
            f"{_plural(len(by_connection), 'connection')}: they are sent after the current backlog "
            "(a paused or faulted connection sends them once resumed).",
            messages.SUCCESS,
        )

    @admin.display(description="Attempts")
    def attempt_list(self, obj: Delivery) -> str:
        """Each attempt that carried this record: when, how long, the outcome or error, and the batch's size."""
        attempts = [failure.attempt for failure in obj.failures.all()]
        if obj.last_attempt_id and obj.last_attempt_id not in {attempt.pk for attempt in attempts}:
            if obj.last_attempt is not None:
                attempts.append(obj.last_attempt)
        if not attempts:
            return "-" if obj.status != Delivery.Status.FAILED else _folded(obj.last_error, 40)
        errors = {failure.attempt_id: failure.error for failure in obj.failures.all()}
        items = []
        for attempt in attempts:
            if attempt.pk in errors:
                error, outcome = errors[attempt.pk], badge("failed", "bad")
            else:
                error = f"{attempt.error_code}: {attempt.error_message}" if attempt.error_code else ""
                outcome = badge(attempt.get_outcome_display(), OUTCOME_TONES.get(attempt.outcome, "muted"))
            items.append(
                format_html(
                    '<li>{} <span class="nowrap" title="{} ({})">{}</span> <span class="nowrap quiet">{} ms · {} '
                    "record{}</span> {}</li>",
                    outcome,
                    utc_text(attempt.started_at),
                    relative_text(attempt.started_at),
                    f"{attempt.started_at.astimezone(UTC):%H:%M:%S}",
                    attempt.duration_ms,
                    attempt.records,
                    "" if attempt.records == 1 else "s",
                    _folded(error, 32) if error else "",
                )
            )
        return format_html('<ul class="attempt-list">{}</ul>', mark_safe("".join(items)))

    created = date_column("created_at", "Created")
    created_detail = date_column("created_at", "Created", compact=False)
    delivered_detail = date_column("delivered_at", "Delivered", compact=False)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Delivery) -> str:
        return badge(obj.get_status_display(), DELIVERY_TONES.get(obj.status, "muted"))

    @admin.display(description="User", ordering="user")
    def user_link(self, obj: Delivery) -> str:
        return _admin_link(obj.user)

    @admin.display(description="ID")
    def delivery_id(self, obj: Delivery) -> int:
        """Not sortable, so that the column stays narrow: the list is newest first already (and sorts by date)."""
        return obj.pk

    @admin.display(description="Kind", ordering="kind")
    def kind_short(self, obj: Delivery) -> str:
        """The kind, short, with the record's IsMember as an icon (both spelled out in the tooltip)."""
        return format_html(
            '<span class="nowrap" title="{}, IsMember {}">{} {}</span>',
            obj.get_kind_display(),
            {True: "true", False: "false"}.get(obj.is_member, "-"),
            KIND_SHORT.get(obj.kind, obj.kind),
            display_for_value(obj.is_member, "", boolean=True),
        )

    @admin.display(description="Member", boolean=True)
    def member(self, obj: Delivery) -> bool | None:
        return obj.is_member

    @admin.display(description="Timestamp")
    def record_timestamp(self, obj: Delivery) -> str:
        """The record's MembershipChangedTimestamp (Unix seconds), with the date it stands for."""
        return format_html("{} ({})", obj.timestamp, utc_text(datetime.fromtimestamp(obj.timestamp, UTC)))

    @admin.display(description="Next attempt at")
    def next_attempt(self, obj: Delivery) -> str:
        return when(obj.next_attempt_at) if obj.status == Delivery.Status.PENDING else "-"

    @admin.display(description="Last error")
    def error_text(self, obj: Delivery) -> str:
        return _folded(obj.last_error, 120)


class OperationFilter(admin.SimpleListFilter):
    """The operations the engine calls, listed as constants: Django's filter for a plain text field would first read
    every distinct value of the whole attempts table."""

    title = "operation"
    parameter_name = "operation"

    def lookups(self, request, model_admin):
        return [("PutRecordBatch", "PutRecordBatch"), ("PutRecord", "PutRecord")]

    def queryset(self, request, queryset):
        return queryset.filter(operation=self.value()) if self.value() else queryset


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(EngineLogAdmin):
    list_display = ["outcome_badge", "error", "started", "connection_link", "record_count", "duration"]
    list_display_links = ["started"]
    list_filter = ["outcome", OperationFilter, ("connection", ConnectionListFilter), time_filter("started_at")]
    list_select_related = ["connection__audience"]
    ordering = ["-id"]
    show_full_result_count = False
    paginator = LogPaginator
    list_per_page = 100
    fields = [
        "connection",
        "operation",
        "outcome_badge",
        "error_code_text",
        "error_message",
        "records",
        "failed_records",
        "bytes",
        "started_detail",
        "duration",
    ]

    started = date_column("started_at", "Started")
    started_detail = date_column("started_at", "Started", compact=False)

    @admin.display(description="Outcome", ordering="outcome")
    def outcome_badge(self, obj: DeliveryAttempt) -> str:
        return badge(obj.get_outcome_display(), OUTCOME_TONES.get(obj.outcome, "muted"))

    @admin.display(description="Error code", ordering="error_code")
    def error_code_text(self, obj: DeliveryAttempt) -> str:
        return obj.error_code or "-"

    @admin.display(description="Records", ordering="records")
    def record_count(self, obj: DeliveryAttempt) -> str:
        if obj.failed_records:
            return format_html('{} <span class="nowrap">({} failed)</span>', obj.records, obj.failed_records)
        return str(obj.records)

    @admin.display(description="Duration (ms)", ordering="duration_ms")
    def duration(self, obj: DeliveryAttempt) -> int:
        return obj.duration_ms

    @admin.display(description="Error", ordering="error_code")
    def error(self, obj: DeliveryAttempt) -> str:
        """The error code, opening onto the message (or the message's first words when there is no code)."""
        if not obj.error_code:
            return _folded(obj.error_message, 40)
        code = obj.error_code
        if code.endswith("Exception"):  # AWS error codes: a line may break before "Exception"
            code = format_html("{}<wbr>Exception", code.removesuffix("Exception"))
        if not obj.error_message:
            return code
        return format_html("<details><summary>{}</summary><pre>{}</pre></details>", code, obj.error_message)
