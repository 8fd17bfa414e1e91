"""Helpers of the admin tests: URLs, actions, messages, the changelist's rows and staff clients."""

from __future__ import annotations

from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.contrib.auth.models import User as StaffUser
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse


def url(name: str, *args: object) -> str:
    return reverse(f"admin:{name}", args=args)


def run_action(client: Client, changelist: str, action: str, objects, **extra: str):
    """Run a changelist's action on `objects`, as the action form posts it."""
    data = {"action": action, ACTION_CHECKBOX_NAME: [str(obj.pk) for obj in objects], **extra}
    return client.post(url(changelist), data)


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def result_rows(page: str) -> str:
    """The changelist's table of results, without the filters beside it."""
    return page.split('id="result_list"')[1].split("</table>")[0]


def staff_client(username: str, *permissions: str) -> Client:
    """A logged-in staff user holding exactly these permissions ("app_label.codename")."""
    user = StaffUser.objects.create_user(username=username, password="unused-password", is_staff=True)
    for permission in permissions:
        app_label, codename = permission.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    client = Client()
    client.force_login(user)
    return client
