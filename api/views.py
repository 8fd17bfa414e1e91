"""Thin API views: validate, call one service, answer. Contract section 7."""

from django.shortcuts import get_object_or_404
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from audiences.selectors import audience_get_live
from audiences.services import (
    audience_create,
    audience_delete,
    audience_update,
    membership_changes_apply,
    user_update,
    users_update,
)
from integrations.configurations import configuration_create, configuration_update
from integrations.connections import (
    connection_create,
    connection_pause,
    connection_resume,
    connection_resync,
    connection_test,
    connection_update,
)
from integrations.models import Configuration, Connection
from integrations.outbox import OUTBOX
from integrations.selectors import alerts_list, connection_backlog

from . import serializers as s
from .errors import InvalidInput
from .models import ApiKey
from .validation import JSONParser, parse_changes, parse_user_update, parse_users, user_id_error

ERRORS = {code: s.ErrorSerializer for code in (400, 401, 403, 404, 413, 415)}


def _validated(serializer_class, data, **kwargs) -> dict:
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """Documents `Authorization: Bearer <api key>` in the OpenAPI document."""

    target_class = "api.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema) -> dict:
        return {"type": "http", "scheme": "bearer", "description": "An API key, created in the admin."}


class IngestView(APIView):
    required_scope = ApiKey.Scope.INGEST
    parser_classes = [JSONParser]


class ManageView(APIView):
    required_scope = ApiKey.Scope.MANAGE
    parser_classes = [JSONParser]


# --- audiences --------------------------------------------------------------------------------------------------


class AudienceListView(ManageView):
    @extend_schema(request=s.AudienceSerializer, responses={201: s.AudienceSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        audience = audience_create(**_validated(s.AudienceSerializer, request.data))
        return Response(s.AudienceSerializer(audience).data, status=status.HTTP_201_CREATED)


class AudienceDetailView(ManageView):
    @extend_schema(responses={200: s.AudienceSerializer, **ERRORS})
    def get(self, request: Request, audience_id: int) -> Response:
        return Response(s.AudienceSerializer(audience_get_live(audience_id)).data)

    @extend_schema(request=s.AudienceUpdateSerializer, responses={200: s.AudienceSerializer, **ERRORS})
    def patch(self, request: Request, audience_id: int) -> Response:
        audience = audience_get_live(audience_id)
        audience = audience_update(audience=audience, **_validated(s.AudienceUpdateSerializer, request.data))
        return Response(s.AudienceSerializer(audience).data)

    @extend_schema(responses={204: None, **ERRORS})
    def delete(self, request: Request, audience_id: int) -> Response:
        audience_delete(audience=audience_get_live(audience_id), outbox=OUTBOX)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AudienceChangesView(IngestView):
    @extend_schema(request=s.ChangesRequestSerializer, responses={202: s.ChangesResponseSerializer, **ERRORS})
    def post(self, request: Request, audience_id: int) -> Response:
        audience = audience_get_live(audience_id)
        changes = parse_changes(request.data)
        result = membership_changes_apply(audience=audience, changes=changes, outbox=OUTBOX)
        return Response({"accepted": result.accepted, "ignored": result.ignored}, status=status.HTTP_202_ACCEPTED)


class UserListView(IngestView):
    @extend_schema(request=s.UsersSerializer, responses={202: s.UsersResponseSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        """Create or update up to 10,000 users at once, in order, validated whole (contract section 9)."""
        result = users_update(users=parse_users(request.data), outbox=OUTBOX)
        return Response({"accepted": result.accepted, "ignored": result.ignored}, status=status.HTTP_202_ACCEPTED)


class UserView(IngestView):
    @extend_schema(request=s.UserUpdateSerializer, responses={200: s.UserSerializer, **ERRORS})
    def put(self, request: Request, user_id: str) -> Response:
        """Create or update a user: `identities` replace its identities, `attributes` are merged into its
        attributes (contract section 9)."""
        if (message := user_id_error(user_id)) is not None:
            raise InvalidInput([("user_id", message)])
        identities, attributes = parse_user_update(request.data)
        user = user_update(user_id=user_id, identities=identities, attributes=attributes, outbox=OUTBOX)
        return Response(s.UserSerializer(user).data)


# --- configurations ---------------------------------------------------------------------------------------------


class ConfigurationListView(ManageView):
    @extend_schema(request=s.ConfigurationSerializer, responses={201: s.ConfigurationSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        configuration = configuration_create(**_validated(s.ConfigurationSerializer, request.data))
        return Response(s.ConfigurationSerializer(configuration).data, status=status.HTTP_201_CREATED)


class ConfigurationDetailView(ManageView):
    @extend_schema(responses={200: s.ConfigurationSerializer, **ERRORS})
    def get(self, request: Request, configuration_id: int) -> Response:
        return Response(s.ConfigurationSerializer(get_object_or_404(Configuration, pk=configuration_id)).data)

    @extend_schema(request=s.ConfigurationUpdateSerializer, responses={200: s.ConfigurationSerializer, **ERRORS})
    def patch(self, request: Request, configuration_id: int) -> Response:
        configuration = get_object_or_404(Configuration, pk=configuration_id)
        data = _validated(s.ConfigurationUpdateSerializer, request.data, instance=configuration, partial=True)
        configuration = configuration_update(configuration=configuration, **data)
        return Response(s.ConfigurationSerializer(configuration).data)


# --- connections ------------------------------------------------------------------------------------------------


def _connection_data(connection: Connection) -> dict:
    connection.backlog = connection_backlog(connection)
    return s.ConnectionSerializer(connection).data


class ConnectionListView(ManageView):
    @extend_schema(request=s.ConnectionSerializer, responses={201: s.ConnectionSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        connection = connection_create(**_validated(s.ConnectionSerializer, request.data))
        return Response(_connection_data(connection), status=status.HTTP_201_CREATED)


class ConnectionDetailView(ManageView):
    @extend_schema(responses={200: s.ConnectionSerializer, **ERRORS})
    def get(self, request: Request, connection_id: int) -> Response:
        return Response(_connection_data(get_object_or_404(Connection, pk=connection_id)))

    @extend_schema(request=s.ConnectionUpdateSerializer, responses={200: s.ConnectionSerializer, **ERRORS})
    def patch(self, request: Request, connection_id: int) -> Response:
        connection = get_object_or_404(Connection, pk=connection_id)
        data = dict(_validated(s.ConnectionUpdateSerializer, request.data, partial=True))
        connection = connection_update(connection=connection, **data)
        return Response(_connection_data(connection))


class ConnectionTestView(ManageView):
    @extend_schema(request=None, responses={200: s.ConnectionTestSerializer, **ERRORS})
    def post(self, request: Request, connection_id: int) -> Response:
        connection = get_object_or_404(Connection.objects.select_related("configuration"), pk=connection_id)
        result = connection_test(connection=connection)
        return Response(
            {
                "ok": result.ok,
                "stream_status": result.stream_status,
                "stream_arn": result.stream_arn,
                "error": result.error,
            }
        )


class ConnectionResyncView(ManageView):
    @extend_schema(request=None, responses={202: s.ConnectionSerializer, **ERRORS})
    def post(self, request: Request, connection_id: int) -> Response:
        connection = connection_resync(connection=get_object_or_404(Connection, pk=connection_id))
        return Response(_connection_data(connection), status=status.HTTP_202_ACCEPTED)


class ConnectionPauseView(ManageView):
    @extend_schema(request=None, responses={200: s.ConnectionSerializer, **ERRORS})
    def post(self, request: Request, connection_id: int) -> Response:
        connection = connection_pause(connection=get_object_or_404(Connection, pk=connection_id))
        return Response(_connection_data(connection))


class ConnectionResumeView(ManageView):
    @extend_schema(request=None, responses={200: s.ConnectionSerializer, **ERRORS})
    def post(self, request: Request, connection_id: int) -> Response:
        connection = connection_resume(connection=get_object_or_404(Connection, pk=connection_id))
        return Response(_connection_data(connection))


# --- alerts -----------------------------------------------------------------------------------------------------


class AlertListView(ManageView):
    @extend_schema(
        parameters=[
            OpenApiParameter("connection", int, description="Only this connection's alerts."),
            OpenApiParameter("open", bool, description="true: not yet acknowledged; false: acknowledged."),
        ],
        responses={200: s.AlertSerializer(many=True), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        errors = []
        connection_id = request.query_params.get("connection")
        if connection_id is not None:
            if not (connection_id.isascii() and connection_id.isdigit()) or len(connection_id) > 18:
                errors.append(("connection", "Must be a connection id."))
        is_open = request.query_params.get("open")
        if is_open is not None and is_open not in ("true", "false"):
            errors.append(("open", "Must be true or false."))
        if errors:
            raise InvalidInput(errors)
        alerts = alerts_list(
            connection_id=int(connection_id) if connection_id else None,
            open=None if is_open is None else is_open == "true",
        )[:1000]
        return Response(s.AlertSerializer(alerts, many=True).data)
