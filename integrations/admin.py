"""Admin for Configuration Settings, Connection Settings, System Alerts and the delivery logs.

Every write goes through a service (integrations.services, integrations.alerts); the admin only renders and asks.

Roles (the groups made by migration 0003_roles_groups): the connection actions need the custom permission
`integrations.operate_connection` and acknowledging needs `integrations.acknowledge_systemalert`, not the change
permission, so that Operators run them from a view-only changelist. Nobody without a permission on Configuration
sees a link to, or any field of, a configuration beyond its name.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.paginator import Paginator
from django.db import connection as db_connection
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator
from django.views.decorators.debug import sensitive_post_parameters

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

STATUS_COLOURS = {
    Connection.Status.ACTIVE: "#2e7d32",
    Connection.Status.PAUSED: "#6d6d6d",
    Connection.Status.FAULTED: "#c62828",
}


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


def _folded(text: str, length: int = 60) -> str:
    """Long error text folded into <details>: the first words as the summary, all of it when opened."""
    if not text:
        return "-"
    summary = Truncator(text).chars(length)
    if summary == text:
        return text
    return format_html("<details><summary>{}</summary><pre>{}</pre></details>", summary, text)


def can_view_configurations(request: HttpRequest) -> bool:
    """Configuration pages hold the credentials: only users with a permission on Configuration reach them."""
    return request.user.has_perm("integrations.view_configuration") or request.user.has_perm(
        "integrations.change_configuration"
    )


def _admin_link(obj: Any, label: str | None = None) -> str:
    if obj is None:
        return "-"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, label or str(obj))


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


# --- Configuration Settings -------------------------------------------------------------------------------------


@admin.register(Configuration)
class ConfigurationAdmin(admin.ModelAdmin):
    form = ConfigurationAdminForm
    list_display = ["name", "access_key", "send_remove_on_identity_change", "endpoint_url", "connections", "updated_at"]
    search_fields = ["name"]

    def get_fieldsets(self, request: HttpRequest, obj: Configuration | None = None):
        settings = ["name", "access_key_id", SECRET_FIELD, "send_remove_on_identity_change", "endpoint_url"]
        if obj is None:
            return [("Configuration Settings", {"fields": settings})]
        return [
            ("Configuration Settings", {"fields": settings}),
            ("Used by", {"fields": ["connection_links", "created_at", "updated_at"]}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Configuration | None = None):
        return ["connection_links", "created_at", "updated_at"] if obj else []

    def get_queryset(self, request: HttpRequest) -> QuerySet[Configuration]:
        return super().get_queryset(request).annotate(connection_count=Count("connections"))

    @method_decorator(sensitive_post_parameters(SECRET_FIELD))
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "Configuration Settings", **(extra_context or {})})

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

    @admin.display(description="Access Key ID")
    def access_key(self, obj: Configuration) -> str:
        return obj.access_key_hint

    @admin.display(description="connections", ordering="connection_count")
    def connections(self, obj: Configuration) -> int:
        return obj.connection_count

    @admin.display(description="connections")
    def connection_links(self, obj: Configuration) -> str:
        connections = obj.connections.select_related("audience").order_by("pk")
        return format_html_join(mark_safe("<br>"), "{}", ((_admin_link(c),) for c in connections)) or "-"


# --- Connection Settings ----------------------------------------------------------------------------------------

CONNECTION_SETTINGS = ConnectionAdminForm.Meta.fields
CONNECTION_STATUS = [
    "status_badge",
    "backlog",
    "delivered_count",
    "failed_count",
    "anonymous_skipped_count",
    "last_delivered_at",
    "last_error_text",
    "last_error_at",
    "resync_progress",
    "open_alerts",
    "consecutive_failures",
    "next_attempt_at",
    "batch_permitted",
]
CONNECTION_STREAM = ["stream_arn_text", "last_tested_at", "iam_policy"]


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    form = ConnectionAdminForm
    list_display = [
        "__str__",
        "audience",
        "stream_name",
        "region",
        "status_badge",
        "backlog",
        "last_delivered_at",
        "last_error_short",
    ]
    list_display_links = ["__str__"]
    list_filter = ["status", "region", "configuration"]
    list_select_related = ["audience", "configuration"]
    search_fields = ["stream_name", "audience__internal_name", "audience__external_name"]
    actions = ["test_connection", "resync", "pause", "resume"]

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Test, resync, pause and resume: the Operators' permission (superusers have every permission)."""
        return request.user.has_perm(f"{self.opts.app_label}.operate_connection")

    def get_fieldsets(self, request: HttpRequest, obj: Connection | None = None):
        fields = CONNECTION_SETTINGS
        if obj is not None and not self.has_change_permission(request, obj) and not can_view_configurations(request):
            # A read-only field would link to the configuration's page; its name is all this user may see.
            fields = ["configuration_name" if name == "configuration" else name for name in fields]
        settings = ("Connection Settings", {"fields": fields})
        if obj is None:
            return [settings]
        return [
            settings,
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

    def get_queryset(self, request: HttpRequest) -> QuerySet[Connection]:
        return connections_with_backlog(super().get_queryset(request))

    def changelist_view(self, request, extra_context=None):
        context = {
            "title": "Connection Settings",
            "faulted_count": Connection.objects.filter(status=Connection.Status.FAULTED).count(),
            "open_alert_count": SystemAlert.objects.filter(acknowledged=False).count(),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

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

    # --- columns and read-only fields ---

    @admin.display(description="Configuration")
    def configuration_name(self, obj: Connection) -> str:
        return obj.configuration.name

    @admin.display(description="Stream ARN")
    def stream_arn_text(self, obj: Connection) -> str:
        return obj.stream_arn or "- (found by Test connection)"

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Connection) -> str:
        return format_html(
            '<span style="background:{};color:#fff;border-radius:8px;padding:1px 8px;white-space:nowrap">{}</span>',
            STATUS_COLOURS.get(obj.status, "#6d6d6d"),
            obj.get_status_display(),
        )

    @admin.display(description="backlog", ordering="backlog")
    def backlog(self, obj: Connection) -> int:
        backlog = getattr(obj, "backlog", None)
        return connection_backlog(obj) if backlog is None else backlog

    @admin.display(description="last error")
    def last_error_short(self, obj: Connection) -> str:
        return Truncator(obj.last_error).chars(80) if obj.last_error else "-"

    @admin.display(description="last error")
    def last_error_text(self, obj: Connection) -> str:
        return _folded(obj.last_error, 120)

    @admin.display(description="resync")
    def resync_progress(self, obj: Connection) -> str:
        if obj.resync_running:
            return f"running: {obj.resync_queued} of {obj.resync_total} members queued"
        if obj.resync_requested_at:
            return f"not running (last requested {obj.resync_requested_at:%Y-%m-%d %H:%M:%S} UTC)"
        return "not running"

    @admin.display(description="open alerts")
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
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Resync connections",
            "subtitle": None,
            "opts": self.opts,
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


class OpenAlertFilter(admin.SimpleListFilter):
    title = "open"
    parameter_name = "open"

    def lookups(self, request, model_admin):
        return [("yes", "open"), ("no", "acknowledged")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(acknowledged=False)
        if self.value() == "no":
            return queryset.filter(acknowledged=True)
        return queryset


class ReadOnlyAdmin(admin.ModelAdmin):
    """Logs and alerts are written by the delivery engine only: the admin can look, never add, change or delete."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(SystemAlert)
class SystemAlertAdmin(ReadOnlyAdmin):
    list_display = ["type", "connection", "count", "first_seen", "last_seen", "message", "open"]
    list_filter = [OpenAlertFilter, ("connection", ConnectionListFilter), "type"]
    list_select_related = ["connection__audience"]
    actions = ["acknowledge"]
    fields = [
        "connection",
        "type",
        "count",
        "first_seen",
        "last_seen",
        "last_message",
        "acknowledged",
        "acknowledged_at",
    ]

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "System Alerts", **(extra_context or {})})

    @admin.display(description="last message")
    def message(self, obj: SystemAlert) -> str:
        return _folded(obj.last_message, 80)

    @admin.display(description="open", boolean=True, ordering="acknowledged")
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
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "connection",
        "kind",
        "is_member",
        "user",
        "status",
        "attempts",
        "created_at",
        "delivered_at",
        "error",
    ]
    list_filter = ["status", "kind", ("connection", ConnectionListFilter)]
    list_select_related = ["connection__audience", "user"]
    date_hierarchy = "created_at"
    ordering = ["-id"]
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    list_per_page = 100

    @admin.display(description="last error")
    def error(self, obj: Delivery) -> str:
        return _folded(obj.last_error)


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "started_at",
        "connection",
        "operation",
        "records",
        "failed_records",
        "bytes",
        "outcome",
        "error_code",
        "duration_ms",
        "error",
    ]
    list_filter = ["outcome", "operation", ("connection", ConnectionListFilter)]
    list_select_related = ["connection__audience"]
    date_hierarchy = "started_at"
    ordering = ["-id"]
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    list_per_page = 100

    @admin.display(description="error message")
    def error(self, obj: DeliveryAttempt) -> str:
        return _folded(obj.error_message)
