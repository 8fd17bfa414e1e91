"""The requests to Firehose (DeliveryAttempt): one row per PutRecordBatch or PutRecord, with its outcome."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from integrations.models import DeliveryAttempt

from .base import ConnectionListFilter, EngineLogAdmin, time_filter
from .display import OUTCOME_TONES, badge, date_column, folded
from .paginators import CappedPaginator


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
    paginator = CappedPaginator
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
            return folded(obj.error_message, 40)
        code = obj.error_code
        if code.endswith("Exception"):  # AWS error codes: a line may break before "Exception"
            code = format_html("{}<wbr>Exception", code.removesuffix("Exception"))
        if not obj.error_message:
            return code
        return format_html("<details><summary>{}</summary><pre>{}</pre></details>", code, obj.error_message)
