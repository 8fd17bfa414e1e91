from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from .models import ApiKey


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer <api key>`; keys are looked up by their SHA-256, revoked keys are refused."""

    keyword = b"bearer"

    def authenticate(self, request):
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
