"""Reads for audiences and users."""

from django.shortcuts import get_object_or_404

from .models import Audience


def audience_get_live(audience_id: int) -> Audience:
    """The audience, or 404 when it does not exist or was deleted."""
    return get_object_or_404(Audience.objects.live(), pk=audience_id)
