from .models import ApiKey


def api_key_create(*, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the key itself, which is never stored and cannot be shown again."""
    key = ApiKey.generate()
    api_key = ApiKey.objects.create(name=name, prefix=key[:8], key_hash=ApiKey.hash(key), scopes=sorted(set(scopes)))
    return api_key, key
