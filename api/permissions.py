from rest_framework.permissions import BasePermission

from .models import ApiKey


class HasScope(BasePermission):
    """A view names its scope in `required_scope`: `ingest` for changes and users, `manage` for the rest."""

    message = "This API key lacks the scope this endpoint needs."

    def has_permission(self, request, view) -> bool:
        api_key = request.auth
        if not isinstance(api_key, ApiKey):
            return False
        required = getattr(view, "required_scope", ApiKey.Scope.MANAGE)
        self.message = f"This API key lacks the '{required}' scope."
        return required in (api_key.scopes or [])
