"""Connection Settings: one audience sent to one Firehose delivery stream. Test, Resync, Pause, Resume and Retry
failed run from the list's actions and from the buttons of a connection's page (integrations.connections), for
those with `integrations.operate_connection`."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse

from console.forms import ConnectionAdminForm
from integrations.connections import (
    StatusChanged,
    connection_create,
    connection_delete,
    connection_update,
    connections_delete,
    connections_pause,
    connections_resume,
    connections_resync,
    connections_test,
    deliveries_retry_failed,
)
from integrations.models import Connection, Delivery, DeliveryAttempt, SystemAlert
from integrations.selectors import (
    BACKLOG_COUNT_CAP,
    connection_by_id,
    connection_has_failed_deliveries,
    connections_deletion_counts,
    connections_faulted_count,
    connections_with_backlog,
    resync_progress,
)

from .connection_fields import ConnectionFields
from .display import can_view_configurations, connection_status_badge, plural

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


@admin.register(Connection)
class ConnectionAdmin(ConnectionFields, admin.ModelAdmin):
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
            "faulted_count": connections_faulted_count(),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        can_operate = self.has_operate_permission(request)
        has_failed = can_operate and object_id.isdigit() and connection_has_failed_deliveries(int(object_id))
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
        counts = connections_deletion_counts([connection.pk for connection in connections])

        def capped(count: int) -> str:
            return f"more than {BACKLOG_COUNT_CAP:,}" if count > BACKLOG_COUNT_CAP else f"{count:,}"

        model_count = {
            Connection._meta.verbose_name_plural: len(connections),
            Delivery._meta.verbose_name_plural: capped(counts.deliveries),
            DeliveryAttempt._meta.verbose_name_plural: capped(counts.attempts),
            SystemAlert._meta.verbose_name_plural: capped(counts.alerts),
        }
        summary = [str(connection) for connection in connections]
        if counts.backlog:
            summary.append(f"{capped(counts.backlog)} records still waiting in the backlog, which will never be sent")
        summary.append("Its deliveries, attempts and alerts are deleted in the background, a few thousand at a time.")
        perms_needed = set() if self.has_delete_permission(request) else {Connection._meta.verbose_name}
        return summary, model_count, perms_needed, []

    def delete_model(self, request: HttpRequest, obj: Connection) -> None:
        connection_delete(connection=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        connections_delete(connections=queryset)

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
        connection = connection_by_id(int(object_id)) if object_id.isdigit() else None
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
                f"Queued {plural(queued, 'failed delivery', 'failed deliveries')} again: they are sent after the "
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

    # --- actions ---

    @admin.action(description="Test connection (DescribeDeliveryStream)", permissions=["operate"])
    def test_connection(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        for connection, result in connections_test(connections=queryset):
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
        outcome = connections_resync(connections=connections)
        for connection in outcome.started:
            self.log_change(request, connection, "Resync started.")
        started, skipped = len(outcome.started), len(outcome.skipped)
        if started:
            self.message_user(
                request,
                f"Resync started on {plural(started, 'connection')}: every current member is sent again "
                "after the backlog.",
                messages.SUCCESS,
            )
        if skipped:
            self.message_user(
                request, f"Skipped {plural(skipped, 'connection')} of a deleted audience.", messages.WARNING
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
        outcome = connections_pause(connections=queryset)
        self._status_changed(request, outcome, "Paused", "changes accumulate and nothing is sent", "already paused")

    @admin.action(description="Resume selected connections (send the backlog)", permissions=["operate"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        outcome = connections_resume(connections=queryset)
        self._status_changed(request, outcome, "Resumed", "the backlog is sent in order", "already active")

    def _status_changed(self, request, outcome: StatusChanged, verb: str, effect: str, already: str) -> None:
        for connection in outcome.changed:
            self.log_change(request, connection, f"{verb}.")
        changed, unchanged = len(outcome.changed), outcome.unchanged
        message = f"{verb} {plural(changed, 'connection')}: {effect}."
        if unchanged:
            message += f" {plural(unchanged, 'connection was', 'connections were')} {already}."
        self.message_user(request, message, messages.SUCCESS if changed else messages.INFO)
