from django.conf import settings
from django.http import JsonResponse

from .errors import body_too_large_message, error_body


class RequestBodyLimitMiddleware:
    """Refuse an API body over API_MAX_BODY_BYTES with 413, from its Content-Length, before anything reads it.

    A body without a Content-Length (chunked transfer encoding) is refused with 400 instead of being taken for an
    empty one: Django reads at most Content-Length bytes of a request, so such a body would never be read at all.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            meta = request.META
            try:
                length = int(meta.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > settings.API_MAX_BODY_BYTES:
                return JsonResponse(error_body([("body", body_too_large_message())]), status=413)
            if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower() and not meta.get("CONTENT_LENGTH"):
                message = "Send the body with a Content-Length header: chunked transfer encoding is not supported."
                return JsonResponse(error_body([("body", message)]), status=400)
        return self.get_response(request)
