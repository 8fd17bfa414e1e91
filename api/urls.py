from django.urls import path, re_path, register_converter

from . import views
from .errors import not_found


class UserIdConverter:
    """Any user id the changes API accepts, `/` and newlines included (`PUT /api/v1/users/tenant%2F42`); the view
    checks it like the changes API does."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(UserIdConverter, "user_id")

urlpatterns = [
    path("audiences", views.AudienceListView.as_view()),
    path("audiences/<int:audience_id>", views.AudienceDetailView.as_view()),
    path("audiences/<int:audience_id>/changes", views.AudienceChangesView.as_view()),
    path("users", views.UserListView.as_view()),
    path("users/<user_id:user_id>", views.UserView.as_view()),
    path("configurations", views.ConfigurationListView.as_view()),
    path("configurations/<int:configuration_id>", views.ConfigurationDetailView.as_view()),
    path("connections", views.ConnectionListView.as_view()),
    path("connections/<int:connection_id>", views.ConnectionDetailView.as_view()),
    path("connections/<int:connection_id>/test", views.ConnectionTestView.as_view()),
    path("connections/<int:connection_id>/resync", views.ConnectionResyncView.as_view()),
    path("connections/<int:connection_id>/pause", views.ConnectionPauseView.as_view()),
    path("connections/<int:connection_id>/resume", views.ConnectionResumeView.as_view()),
    path("alerts", views.AlertListView.as_view()),
    re_path(r"^[\s\S]*$", not_found),  # not ".*", which stops at a newline: /api/v1/%0A is an API 404 too
]
