"""Configuration Settings: the credentials and settings that connections share, written through
integrations.configurations (a blank secret keeps the stored one)."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.decorators import method_decorator
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe
from django.views.decorators.debug import sensitive_post_parameters

from console.forms import SECRET_FIELD, ConfigurationAdminForm
from integrations.configurations import configuration_create, configuration_update
from integrations.models import Configuration
from integrations.selectors import configuration_connections

from .display import admin_link, date_column


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
        connections = configuration_connections(obj)
        return format_html_join(mark_safe("<br>"), "{}", ((admin_link(c),) for c in connections)) or "-"
