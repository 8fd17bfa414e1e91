"""Helpers of the admin tests: URLs, messages and the changelist's rows."""

from __future__ import annotations

from django.contrib.messages import get_messages
from django.urls import reverse


def url(name: str, *args: object) -> str:
    return reverse(f"admin:{name}", args=args)


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def result_rows(page: str) -> str:
    """The changelist's table of results, without the filters beside it."""
    return page.split('id="result_list"')[1].split("</table>")[0]
