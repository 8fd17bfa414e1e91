"""The identity keys of the contract (section 2) and the connection filters applied to them."""

import json
from typing import Any

from django.db import models

IDENTITY_KEYS: tuple[str, ...] = (
    "AndroidId",
    "GoogleAdvertisingIdentifier",
    "AppleVendorIdentifier",
    "AppleAdvertisingIdentifier",
    "RokuAdvertisingIdentifier",
    "RokuPublisherIdentifier",
    "FireAdvertisingIdentifier",
    "MicrosoftAdvertisingIdentifier",
    "Other",
    *(f"Other{n}" for n in range(2, 11)),
    "CustomerId",
    "Email",
    "FacebookId",
    "GoogleId",
    "MicrosoftId",
    "TwitterId",
    "YahooId",
)
IDENTITY_KEY_SET = frozenset(IDENTITY_KEYS)
IDENTITY_LABELS: dict[str, str] = {
    "AndroidId": "Android ID",
    "GoogleAdvertisingIdentifier": "Google Advertising ID (GAID)",
    "AppleVendorIdentifier": "Apple Vendor ID (IDFV)",
    "AppleAdvertisingIdentifier": "Apple Advertising ID (IDFA)",
    "RokuAdvertisingIdentifier": "Roku Advertising ID",
    "RokuPublisherIdentifier": "Roku Publisher ID",
    "FireAdvertisingIdentifier": "Fire Advertising ID",
    "MicrosoftAdvertisingIdentifier": "Microsoft Advertising ID",
    "Other": "Alias / Other",
    **{f"Other{n}": f"Other {n}" for n in range(2, 11)},
    "CustomerId": "Customer ID",
    "Email": "Email Address",
    "FacebookId": "Facebook ID",
    "GoogleId": "Google ID",
    "MicrosoftId": "Microsoft ID",
    "TwitterId": "Twitter ID",
    "YahooId": "Yahoo ID",
}
IDENTITY_CHOICES = [(key, IDENTITY_LABELS[key]) for key in IDENTITY_KEYS]
MAX_IDENTITY_LENGTH = 1024

Identities = dict[str, str]

# The JSON text of identities as stored: the keys in their given order, non-ASCII characters as they are.
identities_json = json.JSONEncoder(ensure_ascii=False).encode


def text_error(value: Any, *, max_length: int, allow_empty: bool = False) -> str | None:
    """The message for a bad string, or None: type, length, NUL characters and unpaired surrogates."""
    if not isinstance(value, str):
        return "Must be a string."
    if not value and not allow_empty:
        return "Must not be empty."
    if len(value) > max_length:
        return f"Must be at most {max_length} characters."
    if "\x00" in value:
        return "Must not contain NUL characters."
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "Must be valid Unicode (no unpaired surrogates)."
    return None


def identity_errors(value: Any, path: str) -> list[tuple[str, str]]:
    """Return (field path, message) pairs for everything wrong with an identities object."""
    if not isinstance(value, dict):
        return [(path, "Must be an object of identity key to string.")]
    errors = []
    for key, item in value.items():
        field = f"{path}.{key}"
        if key not in IDENTITY_KEY_SET:
            errors.append((field, f"Unknown identity key '{key}'."))
        elif (message := text_error(item, max_length=MAX_IDENTITY_LENGTH)) is not None:
            errors.append((field, message))
    return errors


class IdentitiesField(models.TextField):
    """A JSON object kept as text, so that the order of the keys survives (PostgreSQL's jsonb would sort them)."""

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Identities | None:
        return None if value is None else json.loads(value)

    def to_python(self, value: Any) -> Identities | None:
        if value is None or isinstance(value, dict):
            return value
        return json.loads(value)

    def get_prep_value(self, value: Any) -> str | None:
        if value is None:
            return None
        return identities_json(value)

    def value_to_string(self, obj: Any) -> str:
        return self.get_prep_value(self.value_from_object(obj)) or ""
