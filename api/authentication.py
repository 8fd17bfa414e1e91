"""API key authentication, with failed attempts rate limited per client address.

After API_AUTH_FAILURE_LIMIT failed attempts within API_AUTH_FAILURE_WINDOW_SECONDS, every request from that address
gets 429 with Retry-After, even with a valid key, until API_AUTH_FAILURE_WINDOW_SECONDS have passed. The counters live
in the Django cache (Redis by default), so all web processes share them. When the cache is unavailable the limit is
skipped for a while and keys still work: the limit fails open, authentication never does.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from project.process_local import Pause

from .models import ApiKey

logger = logging.getLogger(__name__)

T = TypeVar("T")

# After a cache error the limit is skipped this long, so that requests do not each wait for an unreachable cache.
CACHE_RETRY_AFTER_SECONDS = 30.0
cache_pause = Pause(CACHE_RETRY_AFTER_SECONDS)


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer <api key>`; keys are looked up by their SHA-256, revoked keys are refused."""

    keyword = b"bearer"

    def authenticate(self, request):
        client = client_address(request)
        wait = auth_blocked_for(client)
        if wait:
            raise exceptions.Throttled(wait=wait, detail="Too many failed API key attempts from this address.")
        try:
            return self._authenticate(request)
        except exceptions.AuthenticationFailed:
            auth_failure_record(client)
            raise

    def _authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header:
            return None
        if header[0].lower() != self.keyword or len(header) != 2:
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <api key>'.")
        try:
            key = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid API key.") from None
        api_key = ApiKey.objects.filter(key_hash=ApiKey.hash(key), revoked_at__isnull=True).first()
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=timezone.now())
        return (api_key, api_key)

    def authenticate_header(self, request) -> str:
        return "Bearer"


# --- failed attempts, per client address ---------------------------------------------------------------------------


def client_address(request) -> str:
    """REMOTE_ADDR; behind API_TRUSTED_PROXY_COUNT proxies, the address the outermost proxy saw. IPv6 by /64."""
    address = request.META.get("REMOTE_ADDR", "")
    proxies = settings.API_TRUSTED_PROXY_COUNT
    if proxies:
        forwarded = [item.strip() for item in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if item.strip()]
        if forwarded:
            address = forwarded[-min(proxies, len(forwarded))]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))  # one host usually holds a whole /64
    return str(ip)


def auth_blocked_for(client: str) -> int:
    """Seconds until `client` may try again; 0 when it is not blocked (or the cache cannot tell)."""
    if not settings.API_AUTH_FAILURE_LIMIT:
        return 0
    until = _cache_call(lambda: cache.get(_blocked_key(client)), default=None)
    if until is None:
        return 0
    return max(1, math.ceil(until - time.time()))


def auth_failure_record(client: str) -> None:
    """Count a failed attempt; the one that reaches the limit blocks the address for a window."""
    limit, window = settings.API_AUTH_FAILURE_LIMIT, settings.API_AUTH_FAILURE_WINDOW_SECONDS
    if not limit:
        return

    def record() -> None:
        key = _failures_key(client)
        cache.add(key, 0, timeout=window)  # the window starts with the first failure
        try:
            failures = cache.incr(key)
        except ValueError:  # the window ended between add and incr
            failures = 1
            cache.set(key, failures, timeout=window)
        if failures >= limit and cache.add(_blocked_key(client), time.time() + window, timeout=window):
            logger.warning(
                "API authentication from %s blocked for %s s after %s failed attempts.", client, window, failures
            )

    _cache_call(record, default=None)


def _failures_key(client: str) -> str:
    return f"api-auth:failures:{client}"


def _blocked_key(client: str) -> str:
    return f"api-auth:blocked:{client}"


def _cache_call(operation: Callable[[], T], *, default: T) -> T:
    """Run a cache operation; on any cache error, go on without the limit for CACHE_RETRY_AFTER_SECONDS."""
    if cache_pause.active():
        return default
    try:
        return operation()
    except Exception as exc:  # noqa: BLE001 - an unavailable cache must never stop authentication
        cache_pause.start()
        logger.warning(
            "The cache is unavailable (%s): failed API authentication is not rate limited for the next %s s.",
            type(exc).__name__,
            int(CACHE_RETRY_AFTER_SECONDS),
        )
        return default
