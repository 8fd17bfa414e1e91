from django.utils import timezone

from .models import ApiKey


def api_key_create(*, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the key itself, which is never stored and cannot be shown again."""
    key = ApiKey.generate()
    api_key = ApiKey.objects.create(name=name, prefix=key[:8], key_hash=ApiKey.hash(key), scopes=sorted(set(scopes)))
    return api_key, key


def api_key_update(*, api_key: ApiKey, name: str, scopes: list[str]) -> ApiKey:
    """Rename a key or change its scopes; the key itself never changes."""
    api_key.name, api_key.scopes = name, sorted(set(scopes))
    api_key.save(update_fields=["name", "scopes"])
    return api_key


def api_keys_revoke(*, api_key_ids: list[int]) -> int:
    """Revoke keys: the API refuses them from now on. Returns how many were still active."""
    return ApiKey.objects.filter(pk__in=api_key_ids, revoked_at__isnull=True).update(revoked_at=timezone.now())
