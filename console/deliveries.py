"""The delivery log: one row per record to send, with the attempts that carried it; failed ones are queued again by
Retry failed (integrations.connections)."""

from __future__ import annotations

from datetime import UTC, datetime

from django.contrib import admin, messages
from django.contrib.admin.utils import display_for_value
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from integrations.connections import deliveries_retry_failed_selected
from integrations.models import Delivery, DeliveryFailure

from .base import ConnectionListFilter, EngineLogAdmin, time_filter
from .display import (
    DELIVERY_TONES,
    OUTCOME_TONES,
    admin_link,
    badge,
    date_column,
    folded,
    plural,
    relative_text,
    utc_text,
    when,
)
from .paginators import CappedPaginator

KIND_SHORT = {Delivery.Kind.CHANGE: "change", Delivery.Kind.RESYNC: "resync", Delivery.Kind.AUDIENCE_DELETED: "deleted"}


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
    paginator = CappedPaginator
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
        requeued = deliveries_retry_failed_selected(deliveries=queryset)
        queued = requeued.queued
        if not queued:
            self.message_user(request, "None of the selected deliveries had failed: nothing to retry.", messages.INFO)
            return
        self.message_user(
            request,
            f"Queued {plural(queued, 'failed delivery', 'failed deliveries')} again on "
            f"{plural(requeued.connections, 'connection')}: they are sent after the current backlog "
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
            return "-" if obj.status != Delivery.Status.FAILED else folded(obj.last_error, 40)
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
                    folded(error, 32) if error else "",
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
        return admin_link(obj.user)

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
        return folded(obj.last_error, 120)
