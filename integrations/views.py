import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST

from .health import health_check
from .metrics import metrics_text


def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database and Redis answer and a worker ran the sweep recently, else 503; no authentication."""
    health = health_check()
    return JsonResponse(health, status=200 if health["ok"] else 503)


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics. With METRICS_TOKEN set, the scraper must send `Authorization: Bearer <token>`; with DEBUG
    off and no token, they are served only when METRICS_PUBLIC is true."""
    token = settings.METRICS_TOKEN
    if not token and not (settings.METRICS_PUBLIC or settings.DEBUG):
        return HttpResponse(
            "/metrics is off: set METRICS_TOKEN (scrapers send it as a bearer token), or METRICS_PUBLIC=true.\n",
            status=403,
            content_type="text/plain",
        )
    if token:
        scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not hmac.compare_digest(sent.strip().encode(), token.encode()):
            return HttpResponse("A bearer token is required (METRICS_TOKEN).\n", status=401, content_type="text/plain")
    return HttpResponse(metrics_text(), content_type=CONTENT_TYPE_LATEST)
