from django.http import HttpRequest, JsonResponse

from .health import health_check


def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database and Redis answer and a worker ran the sweep recently, else 503; no authentication."""
    health = health_check()
    return JsonResponse(health, status=200 if health["ok"] else 503)
