"""Management commands run as an operator runs them, their output captured."""

import io

from django.core.management import call_command


def run(*args, **options) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, **options)
    return out.getvalue()
