"""Imported by Django's autodiscover: the model admins, one module per model, register on the default site."""

from . import alerts, api_keys, attempts, audiences, configurations, connections, deliveries, users  # noqa: F401
