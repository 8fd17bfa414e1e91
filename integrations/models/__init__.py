"""The integrations app's models, one module per concern."""

from ..validators import (  # the migrations name them here
    validate_access_key_id,
    validate_endpoint_url,
    validate_identity_keys,
    validate_rate_limit_max,
    validate_region,
    validate_stream_name,
)
from .alerts import OPEN_ALERTS, AlertHourlyCount, SystemAlert
from .configurations import Configuration
from .connections import Connection, LiveConnectionManager
from .deliveries import Delivery, DeliveryAttempt, DeliveryFailure, DeliveryLayout, DrainLease
from .stats import ALL_TIME, LATENCY_BUCKETS, DeliveryStats

__all__ = [
    "ALL_TIME",
    "LATENCY_BUCKETS",
    "OPEN_ALERTS",
    "AlertHourlyCount",
    "Configuration",
    "Connection",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryFailure",
    "DeliveryLayout",
    "DeliveryStats",
    "DrainLease",
    "LiveConnectionManager",
    "SystemAlert",
    "validate_access_key_id",
    "validate_endpoint_url",
    "validate_identity_keys",
    "validate_rate_limit_max",
    "validate_region",
    "validate_stream_name",
]
