"""The rules of the configuration and connection settings, each defined once, as a Django validator on its model
field. The admin forms run them through the model; the API serializers run the same objects."""

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, RegexValidator

from audiences.identities import IDENTITY_KEY_SET

from .endpoints import endpoint_url_error
from .regions import FIREHOSE_REGIONS

validate_stream_name = RegexValidator(r"^[a-zA-Z0-9_.-]{1,64}$", "Must be 1-64 letters, digits, '_', '.' or '-'.")
validate_access_key_id = RegexValidator(r"^[A-Z0-9]{16,128}$", "Must be 16-128 upper-case letters and digits.")

# Not a model field (the model keeps the secret encrypted): the admin form and the API take at most this many.
SECRET_ACCESS_KEY_MAX_LENGTH = 256

# The rate limits are PositiveIntegerFields, which PostgreSQL stores as integer.
RATE_LIMIT_MAX = 2_147_483_647
validate_rate_limit_max = MaxValueValidator(RATE_LIMIT_MAX)


def validate_region(value: str) -> None:
    if value not in FIREHOSE_REGIONS:
        raise ValidationError(f"'{value}' is not a Firehose region code (for example us-east-1).")


def validate_identity_keys(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError("Must be a list of identity keys.")
    unknown = [item for item in value if item not in IDENTITY_KEY_SET]
    if unknown:
        raise ValidationError(f"Unknown identity keys: {', '.join(unknown)}.")


def validate_endpoint_scheme(value: str) -> None:
    """URLField also takes ftp:// and ftps://; Firehose is only reached over http or https."""
    if value and not value.lower().startswith(("http://", "https://")):
        raise ValidationError("Must be an http or https URL.")


def validate_endpoint_url(value: str) -> None:
    """An http or https URL whose host is not written as a cloud metadata or link-local address (the address a host
    name resolves to is checked at each connection, by integrations.endpoints)."""
    validate_endpoint_scheme(value)
    if value and (message := endpoint_url_error(value)):
        raise ValidationError(message)
