"""Request and response shapes of the HTTP API (contract section 7). Types are strict: no "true" for true."""

from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from audiences.identities import IDENTITY_KEYS, MAX_IDENTITY_LENGTH
from audiences.models import Audience, User
from integrations.models import Configuration, Connection, SystemAlert
from integrations.regions import FIREHOSE_REGIONS
from integrations.validators import (
    RATE_LIMIT_MAX,
    SECRET_ACCESS_KEY_MAX_LENGTH,
    validate_access_key_id,
    validate_endpoint_scheme,
    validate_stream_name,
)

from .validation import MAX_TIMESTAMP, MAX_USER_ID_LENGTH, text_error


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class TextField(serializers.CharField):
    """A string field that also refuses non-strings, NUL characters and unpaired surrogates."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("Must be a string.")
        message = text_error(data, max_length=self.max_length or 10_000, allow_empty=True)
        if message:
            raise serializers.ValidationError(message)
        return super().to_internal_value(data)


def pattern_field(rule: RegexValidator, **kwargs: Any) -> serializers.RegexField:
    """A string held to a model field's pattern rule (integrations.validators), with its message, which a value of the
    wrong type gets too."""
    return serializers.RegexField(rule.regex, error_messages={"invalid": rule.message}, **kwargs)


def max_length(model: type[models.Model], field: str) -> int:
    """The length of the model's column: the API takes no more than it holds."""
    return model._meta.get_field(field).max_length


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise serializers.ValidationError("Must be an integer.")
        return super().to_internal_value(data)


class IdField(StrictIntegerField):
    """An id in, validated into the object by the serializer's `validate_<field>`; the id out."""

    def to_representation(self, value: Any) -> int:
        return value.pk if hasattr(value, "pk") else int(value)


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, instead of ignoring them silently."""

    def to_internal_value(self, data: Any) -> dict:
        if not isinstance(data, dict):
            raise serializers.ValidationError({"body": ["Must be a JSON object."]})
        writable = {name for name, field in self.fields.items() if not field.read_only}
        refused = sorted(set(data) - writable)
        if refused:
            raise serializers.ValidationError(
                {key: ["Read-only field." if key in self.fields else "Unknown field."] for key in refused}
            )
        return super().to_internal_value(data)


class StrictSerializerSchema(OpenApiSerializerExtension):
    """The OpenAPI document says what StrictSerializer does: a request body with an unknown field is refused."""

    target_class = StrictSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema, direction) -> dict:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        if direction == "request":
            schema["additionalProperties"] = False
        return schema


@extend_schema_field(
    {
        "type": "object",
        "properties": {
            key: {"type": "string", "minLength": 1, "maxLength": MAX_IDENTITY_LENGTH} for key in IDENTITY_KEYS
        },
        "additionalProperties": False,
        "description": "Identity key to value (contract section 2).",
    }
)
class IdentitiesField(serializers.DictField):
    """For the OpenAPI document: identities are validated by audiences.identities.identity_errors."""

    child = serializers.CharField(max_length=MAX_IDENTITY_LENGTH)


# --- audiences --------------------------------------------------------------------------------------------------


class AudienceSerializer(StrictSerializer):
    id = serializers.IntegerField(read_only=True)
    internal_name = TextField(max_length=max_length(Audience, "internal_name"))
    external_name = TextField(
        max_length=max_length(Audience, "external_name"), required=False, allow_blank=True, default=""
    )
    member_count = serializers.IntegerField(read_only=True)

    def validate_internal_name(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("Must not be blank.")
        return value


class AudienceUpdateSerializer(AudienceSerializer):
    internal_name = TextField(max_length=max_length(Audience, "internal_name"), required=False)
    external_name = TextField(max_length=max_length(Audience, "external_name"), required=False, allow_blank=True)


class ChangeSerializer(StrictSerializer):
    """For the OpenAPI document; requests are validated by api.validation.parse_changes."""

    user_id = serializers.CharField(min_length=1, max_length=MAX_USER_ID_LENGTH)
    is_member = serializers.BooleanField()
    identities = IdentitiesField(required=False)
    timestamp = serializers.IntegerField(
        required=False, min_value=0, max_value=MAX_TIMESTAMP, help_text="Unix seconds of the change."
    )


class ChangesRequestSerializer(StrictSerializer):
    """A batch of membership changes: one bad change rejects the whole batch, and nothing is stored."""

    changes = serializers.ListField(
        child=ChangeSerializer(),
        min_length=1,
        max_length=settings.API_MAX_CHANGES_PER_REQUEST,
        help_text="At most 10,000 changes, validated as a whole.",
    )


class ChangesResponseSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    ignored = serializers.IntegerField(help_text="Stale changes and changes that changed nothing.")


class UserUpdateSerializer(StrictSerializer):
    """For the OpenAPI document; requests are validated by api.validation.parse_user_update."""

    identities = IdentitiesField(required=False, help_text="The user's identities: they replace the ones stored.")
    attributes = serializers.DictField(
        required=False,
        help_text="Merged into the user's attributes; a key set to null removes it. A value is a string, a finite "
        "number, a boolean or a list of strings.",
    )


class UserItemSerializer(UserUpdateSerializer):
    user_id = serializers.CharField(min_length=1, max_length=MAX_USER_ID_LENGTH)


class UsersSerializer(StrictSerializer):
    """A batch of users: one bad item rejects the whole batch, and nothing is stored."""

    users = serializers.ListField(
        child=UserItemSerializer(),
        min_length=1,
        max_length=settings.API_MAX_CHANGES_PER_REQUEST,
        help_text="At most 10,000 users, validated as a whole, applied in order.",
    )


class UsersResponseSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    ignored = serializers.IntegerField(help_text="Items that changed nothing.")


class UserSerializer(serializers.ModelSerializer):
    user_id = serializers.CharField(source="external_id")
    identities = IdentitiesField()
    attributes = serializers.DictField(read_only=True)

    class Meta:
        model = User
        fields = ["user_id", "identities", "attributes", "updated_at"]


# --- configurations ---------------------------------------------------------------------------------------------


class ConfigurationSerializer(StrictSerializer):
    """The secret is write-only: it is accepted, encrypted, and never returned."""

    id = serializers.IntegerField(read_only=True)
    name = TextField(max_length=max_length(Configuration, "name"))
    access_key_id = pattern_field(validate_access_key_id, max_length=max_length(Configuration, "access_key_id"))
    secret_access_key = TextField(max_length=SECRET_ACCESS_KEY_MAX_LENGTH, write_only=True, min_length=1)
    send_remove_on_identity_change = StrictBooleanField(required=False, default=True)
    endpoint_url = serializers.URLField(
        required=False, allow_blank=True, default="", max_length=max_length(Configuration, "endpoint_url")
    )
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)

    def validate_name(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("Must not be blank.")
        return value

    def validate_secret_access_key(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("Must not be blank.")
        return value

    def validate_endpoint_url(self, value: str) -> str:
        # Only the scheme here, with the other fields; the model checks the address when the service saves.
        validate_endpoint_scheme(value)
        return value


class ConfigurationUpdateSerializer(ConfigurationSerializer):
    name = TextField(max_length=max_length(Configuration, "name"), required=False)
    access_key_id = pattern_field(
        validate_access_key_id, max_length=max_length(Configuration, "access_key_id"), required=False
    )
    secret_access_key = TextField(
        max_length=SECRET_ACCESS_KEY_MAX_LENGTH, write_only=True, required=False, min_length=1
    )
    send_remove_on_identity_change = StrictBooleanField(required=False)
    endpoint_url = serializers.URLField(
        required=False, allow_blank=True, max_length=max_length(Configuration, "endpoint_url")
    )


# --- connections ------------------------------------------------------------------------------------------------


class ConnectionSerializer(StrictSerializer):
    id = serializers.IntegerField(read_only=True)
    audience = IdField()
    configuration = IdField()
    stream_name = pattern_field(validate_stream_name, max_length=max_length(Connection, "stream_name"))
    region = serializers.ChoiceField(choices=FIREHOSE_REGIONS, required=False, default="us-east-1")
    send_anonymous_users = StrictBooleanField(required=False, default=True)
    forward_email_addresses = StrictBooleanField(required=False, default=True)
    forward_customer_ids = StrictBooleanField(required=False, default=True)
    forward_idfas = StrictBooleanField(required=False, default=True)
    forward_google_advertising_ids = StrictBooleanField(required=False, default=True)
    identities_to_exclude = serializers.ListField(
        child=serializers.ChoiceField(choices=IDENTITY_KEYS),
        required=False,
        default=list,
        max_length=len(IDENTITY_KEYS),
    )
    append_newline = StrictBooleanField(required=False, default=True)
    max_records_per_second = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1, max_value=RATE_LIMIT_MAX
    )
    max_bytes_per_second = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1, max_value=RATE_LIMIT_MAX
    )
    status = serializers.CharField(read_only=True)
    backlog = serializers.IntegerField(read_only=True)
    delivered = serializers.IntegerField(read_only=True, source="delivered_count")
    failed = serializers.IntegerField(read_only=True, source="failed_count")
    anonymous_skipped = serializers.IntegerField(read_only=True, source="anonymous_skipped_count")
    last_delivered_at = serializers.DateTimeField(read_only=True)
    last_error = serializers.CharField(read_only=True)
    last_error_at = serializers.DateTimeField(read_only=True)
    stream_arn = serializers.CharField(read_only=True)
    send_rate = serializers.FloatField(read_only=True, help_text="Share of the rate limits in use now (AIMD).")
    resync = serializers.SerializerMethodField()

    def get_resync(self, connection: Connection) -> dict:
        return {
            "running": connection.resync_running,
            "total": connection.resync_total,
            "queued": connection.resync_queued,
        }

    def validate_audience(self, value: int) -> Audience:
        audience = Audience.objects.live().filter(pk=value).first()
        if audience is None:
            raise serializers.ValidationError(f"No audience with id {value}.")
        return audience

    def validate_configuration(self, value: int) -> Configuration:
        configuration = Configuration.objects.filter(pk=value).first()
        if configuration is None:
            raise serializers.ValidationError(f"No configuration with id {value}.")
        return configuration


class ConnectionUpdateSerializer(ConnectionSerializer):
    audience = serializers.IntegerField(read_only=True, source="audience_id")
    configuration = IdField(required=False)
    stream_name = pattern_field(validate_stream_name, max_length=max_length(Connection, "stream_name"), required=False)
    region = serializers.ChoiceField(choices=FIREHOSE_REGIONS, required=False)
    send_anonymous_users = StrictBooleanField(required=False)
    forward_email_addresses = StrictBooleanField(required=False)
    forward_customer_ids = StrictBooleanField(required=False)
    forward_idfas = StrictBooleanField(required=False)
    forward_google_advertising_ids = StrictBooleanField(required=False)
    identities_to_exclude = serializers.ListField(
        child=serializers.ChoiceField(choices=IDENTITY_KEYS), required=False, max_length=len(IDENTITY_KEYS)
    )
    append_newline = StrictBooleanField(required=False)
    max_records_per_second = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=RATE_LIMIT_MAX
    )
    max_bytes_per_second = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=RATE_LIMIT_MAX
    )


class ConnectionTestSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    stream_status = serializers.CharField()
    stream_arn = serializers.CharField()
    error = serializers.CharField()


class AlertSerializer(serializers.ModelSerializer):
    connection = serializers.IntegerField(source="connection_id")
    open = serializers.BooleanField(source="is_open")

    class Meta:
        model = SystemAlert
        fields = [
            "id",
            "connection",
            "type",
            "count",
            "first_seen",
            "last_seen",
            "last_message",
            "sample_record",
            "open",
            "acknowledged",
            "acknowledged_at",
            "resolved_at",
        ]


class ErrorItemSerializer(serializers.Serializer):
    field = serializers.CharField()
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    errors = ErrorItemSerializer(many=True)
