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
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import display_for_value, unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection as db_connection
from django.db.models import Count, Max, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
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
from project.admin_tools import ReadOnlyAdmin, choice_filter

from .alerts import alerts_acknowledge
from .forms import SECRET_FIELD, ConfigurationAdminForm, ConnectionAdminForm
from .models import Configuration, Connection, Delivery, DeliveryAttempt, SystemAlert
from .selectors import connection_backlog, connection_iam_policy, connections_with_backlog
from .services import (
    configuration_create,
    configuration_update,
    connection_create,
    connection_pause,
    connection_resume,
    connection_resync,
    connection_test,
    connection_update,
)

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


class EstimatedCountPaginator(Paginator):
    """For the delivery logs: an unfiltered list on PostgreSQL takes the planner's row estimate instead of a COUNT(*)
    over the whole table. Filtered lists, small tables and other databases count exactly."""

    ESTIMATE_FROM = 100_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if db_connection.vendor == "postgresql" and isinstance(queryset, QuerySet) and not queryset.query.where:
            with db_connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [queryset.model._meta.db_table]
                )
                row = cursor.fetchone()
            if row and row[0] >= self.ESTIMATE_FROM:
                return row[0]
        return super().count


class ConnectionListFilter(admin.RelatedFieldListFilter):
    """Filter by connection, labelled with audience names loaded in one query (not one per connection)."""

    def field_choices(self, field, request, model_admin):
        return [(c.pk, str(c)) for c in Connection.objects.select_related("audience").order_by("pk")]


# --- the admin index: health summary ----------------------------------------------------------------------------


def health_summary(request: HttpRequest) -> dict[str, Any] | None:
    """Connections by status, open System Alerts, the total backlog and the last delivery, for the admin index.

    Three queries whatever the size of the tables: one aggregate over the connections, one count of open alerts,
    and one count of the pending deliveries only (the rows of the backlog's partial index, never every delivery).
    None for a user who may not see connections."""
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
    summary = {
        **totals,
        "badges": [
            (value, badge(f"{totals[value]} {value}", CONNECTION_TONES[value] if totals[value] else "muted"))
            for value in (status.ACTIVE, status.PAUSED, status.FAULTED)
        ],
        "backlog": Delivery.objects.filter(status=Delivery.Status.PENDING).count(),
        "last_delivery": when(totals["last_delivered_at"]),
        "show_alerts": user.has_perm("integrations.view_systemalert"),
    }
    if summary["show_alerts"]:
        open_alerts = SystemAlert.objects.filter(acknowledged=False).count()
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
            # The form already set the other fields on obj; a blank secret keeps the stored one.
            configuration_update(configuration=obj, secret_access_key=secret)
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
    "status_badge",
    "backlog",
    "delivered",
    "failed",
    "anonymous_skipped",
    "last_delivery_detail",
    "last_error_text",
    "last_error_at_detail",
    "resync_progress",
    "open_alerts",
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
OPERATIONS = ("test", "resync", "pause", "resume")


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    form = ConnectionAdminForm
    list_display = ["status_badge", "backlog", "audience", "stream", "last_delivery", "last_error_short"]
    list_display_links = ["stream"]
    list_filter = ["status", "region", "configuration"]
    list_select_related = ["audience", "configuration"]
    search_fields = ["stream_name", "audience__internal_name", "audience__external_name"]
    actions = ["test_connection", "resync", "pause", "resume"]

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
            *settings,
            ("Status", {"fields": CONNECTION_STATUS}),
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
        return ["audience", *CONNECTION_STATUS, *CONNECTION_STREAM]

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
            "open_alert_count": SystemAlert.objects.filter(acknowledged=False).count(),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        context = {"can_operate": self.has_operate_permission(request), **(extra_context or {})}
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
        """Counts instead of Django's walk over every delivery (a busy connection has millions of them). Deleting
        a connection deletes its deliveries, attempts and alerts with it: the delivery logs' own read-only rules do
        not apply here."""
        connections = list(objs)
        ids = [connection.pk for connection in connections]
        backlog = Delivery.objects.filter(connection_id__in=ids, status=Delivery.Status.PENDING).count()
        model_count = {
            Connection._meta.verbose_name_plural: len(connections),
            Delivery._meta.verbose_name_plural: Delivery.objects.filter(connection_id__in=ids).count(),
            DeliveryAttempt._meta.verbose_name_plural: DeliveryAttempt.objects.filter(connection_id__in=ids).count(),
            SystemAlert._meta.verbose_name_plural: SystemAlert.objects.filter(connection_id__in=ids).count(),
        }
        summary = [str(connection) for connection in connections]
        if backlog:
            summary.append(f"{_plural(backlog, 'record')} still waiting in the backlog, which will never be sent")
        perms_needed = set() if self.has_delete_permission(request) else {Connection._meta.verbose_name}
        return summary, model_count, perms_needed, []

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
        return operations + super().get_urls()

    def operate_view(self, request: HttpRequest, object_id: str, operation: str) -> HttpResponse:
        """Runs one operation on one connection and goes back to its change page with a message. Test, pause and
        resume take a POST; resync first shows its confirmation page (GET) and runs once confirmed."""
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
    def backlog(self, obj: Connection) -> int:
        backlog = getattr(obj, "backlog", None)
        return connection_backlog(obj) if backlog is None else backlog

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
        if obj.resync_running:
            return f"running: {obj.resync_queued} of {obj.resync_total} members queued"
        if obj.resync_requested_at:
            return format_html("not running (last requested {})", when(obj.resync_requested_at))
        return "not running"

    @admin.display(description="Open alerts")
    def open_alerts(self, obj: Connection) -> str:
        count = obj.alerts.filter(acknowledged=False).count()
        if not count:
            return "none"
        url = reverse("admin:integrations_systemalert_changelist")
        return format_html(
            '<a href="{}?connection__id__exact={}&amp;open=yes">{}</a>', url, obj.pk, _plural(count, "open alert")
        )

    @admin.display(description="IAM policy")
    def iam_policy(self, obj: Connection) -> str:
        return format_html("<pre>{}</pre>", json.dumps(connection_iam_policy(obj), indent=2))

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
    "open", "open", {"yes": ("open", Q(acknowledged=False)), "no": ("acknowledged", Q(acknowledged=True))}
)


class EngineLogAdmin(ReadOnlyAdmin):
    """Alerts, deliveries and attempts: read-only, each row linked to its connection."""

    @admin.display(description="Connection", ordering="connection")
    def connection_link(self, obj: SystemAlert | Delivery | DeliveryAttempt) -> str:
        return _connection_link(obj.connection)


@admin.register(SystemAlert)
class SystemAlertAdmin(EngineLogAdmin):
    list_display = ["open", "type", "connection_link", "count", "last_seen_column", "message"]
    list_display_links = ["type"]
    list_filter = [OpenAlertFilter, ("connection", ConnectionListFilter), "type"]
    list_select_related = ["connection__audience"]
    actions = ["acknowledge"]
    fields = [
        "connection",
        "type",
        "count",
        "first_seen_detail",
        "last_seen_detail",
        "last_message",
        "acknowledged",
        "acknowledged_at_detail",
    ]

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "System Alerts", **(extra_context or {})})

    last_seen_column = date_column("last_seen", "Last seen")
    first_seen_detail = date_column("first_seen", "First seen", compact=False)
    last_seen_detail = date_column("last_seen", "Last seen", compact=False)
    acknowledged_at_detail = date_column("acknowledged_at", "Acknowledged at", compact=False)

    @admin.display(description="Last message")
    def message(self, obj: SystemAlert) -> str:
        return _folded(obj.last_message, 60)

    @admin.display(description="Open", boolean=True, ordering="acknowledged")
    def open(self, obj: SystemAlert) -> bool:
        return obj.is_open

    def has_acknowledge_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.acknowledge_systemalert")

    @admin.action(description="Acknowledge selected alerts", permissions=["acknowledge"])
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[SystemAlert]) -> None:
        count = alerts_acknowledge(alert_ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"Acknowledged {_plural(count, 'alert')}.", messages.SUCCESS)


# --- delivery logs ----------------------------------------------------------------------------------------------


@admin.register(Delivery)
class DeliveryAdmin(EngineLogAdmin):
    list_display = [
        "delivery_id",
        "status_badge",
        "created",
        "connection_link",
        "user_link",
        "kind_short",
        "attempts",
        "error",
    ]
    list_filter = ["status", "kind", ("connection", ConnectionListFilter)]
    list_select_related = ["connection__audience", "user"]
    date_hierarchy = "created_at"
    ordering = ["-id"]
    show_full_result_count = False
    paginator = EstimatedCountPaginator
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
        "next_attempt",
        "error_text",
        "last_attempt",
        "created_detail",
        "delivered_detail",
    ]

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

    @admin.display(description="Last error")
    def error(self, obj: Delivery) -> str:
        return _folded(obj.last_error, 40)


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(EngineLogAdmin):
    list_display = ["outcome_badge", "error", "started", "connection_link", "record_count", "duration"]
    list_display_links = ["started"]
    list_filter = ["outcome", "operation", ("connection", ConnectionListFilter)]
    list_select_related = ["connection__audience"]
    date_hierarchy = "started_at"
    ordering = ["-id"]
    show_full_result_count = False
    paginator = EstimatedCountPaginator
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
