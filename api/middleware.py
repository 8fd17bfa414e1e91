import json

from django.conf import settings
from django.http import HttpResponse


class RequestBodyLimitMiddleware:
    """Refuse an API body over API_MAX_BODY_BYTES with 413, from its Content-Length, before anything reads it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > settings.API_MAX_BODY_BYTES:
                body = {
                    "errors": [{"field": "body", "message": f"The body is over {settings.API_MAX_BODY_BYTES} bytes."}]
                }
                return HttpResponse(json.dumps(body), status=413, content_type="application/json")
        return self.get_response(request)
