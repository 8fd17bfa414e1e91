"""Every API error is `{"errors": [{"field": ..., "message": ...}]}`, with paths like `changes[3].identities.Foo`.

The exceptions of the domain get their HTTP answers here, for every view: a model's ValidationError (raised by a
service's full_clean) is a 400, a deleted audience a 404, contention a 503.
"""

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from audiences.services import AudienceDeleted
from project.transactions import RETRY_AFTER_SECONDS, Contention

Error = tuple[str, str]

# Error paths and messages echo what the client sent (an unknown key, a bad choice): cap them.
MAX_ECHO_LENGTH = 1000


class InvalidInput(exceptions.APIException):
    """Raised by our own validators with ready-made (field path, message) pairs."""

    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(self, errors: list[Error]):
        super().__init__("Invalid input.")
        self.errors = errors


class BodyTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE

    def __init__(self) -> None:
        super().__init__(body_too_large_message())


def body_too_large_message() -> str:
    return f"The body is over {settings.API_MAX_BODY_BYTES} bytes."


def flatten(detail: Any, path: str = "") -> list[Error]:
    """Turn DRF's nested error detail into (field path, message) pairs."""
    if isinstance(detail, dict):
        errors = []
        for key, value in detail.items():
            if key in ("non_field_errors", "detail"):
                child = path or "body"
            elif isinstance(key, int):
                child = f"{path}[{key}]"
            else:
                child = f"{path}.{key}" if path else str(key)
            errors.extend(flatten(value, child))
        return errors
    if isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            return [(path or "body", str(item)) for item in detail]
        errors = []
        for index, item in enumerate(detail):
            if item:
                errors.extend(flatten(item, f"{path}[{index}]"))
        return errors
    return [(path or "body", str(detail))]


def model_errors(exc: DjangoValidationError) -> list[Error]:
    """A model's ValidationError as (field path, message) pairs; a unique check in the API's own words."""
    if not hasattr(exc, "error_dict"):
        return flatten({"body": exc.messages})
    return flatten(
        {
            field: [message for error in errors for message in _api_messages(error)]
            for field, errors in exc.error_dict.items()
        }
    )


def _api_messages(error: DjangoValidationError) -> list[str]:
    if error.code == "unique" and error.params:
        options = error.params["model_class"]._meta
        field = options.get_field(error.params["unique_check"][0])
        return [f"A {options.verbose_name} with this {field.verbose_name} exists."]
    return error.messages


def _echo(text: str) -> str:
    """Text that is safe to render: unpaired surrogates (which UTF-8 cannot encode) escaped, long echoes cut."""
    if len(text) > MAX_ECHO_LENGTH:
        text = text[:MAX_ECHO_LENGTH] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(errors: list[Error]) -> dict:
    return {"errors": [{"field": _echo(field), "message": _echo(message)} for field, message in errors]}


def error_response(errors: list[Error], status_code: int) -> Response:
    return Response(error_body(errors), status=status_code)


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, InvalidInput):
        return error_response(exc.errors, 400)
    if isinstance(exc, DjangoValidationError):
        return error_response(model_errors(exc), 400)
    if isinstance(exc, Contention):  # valid input that met too many concurrent writers: try again shortly
        response = error_response([("", "Too many concurrent changes to the same rows; try again.")], 503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    if isinstance(exc, (Http404, AudienceDeleted)):  # an audience deleted while its batch waited is gone, as after
        exc = exceptions.NotFound()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = flatten(exc.detail)
    elif isinstance(exc, exceptions.ParseError):
        errors = [("body", f"Not valid JSON: {exc.detail}")]
    elif isinstance(exc, (BodyTooLarge, exceptions.UnsupportedMediaType)):
        errors = [("body", str(exc.detail))]
    else:
        errors = [("", str(getattr(exc, "detail", exc)))]
    response.data = error_body(errors)
    return response


@csrf_exempt  # like every API view: without it, a POST to an unknown API path got Django's HTML "CSRF failed" page
def not_found(request, *args, **kwargs) -> JsonResponse:
    return JsonResponse(error_body([("", "Not found.")]), status=404)
