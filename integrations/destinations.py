"""The transport of a connection: its stream, reached with its configuration's credentials, decrypted in memory.

Each kind of destination is one module of `integrations.transport`; this is where a connection picks its own.
"""

from __future__ import annotations

from cryptography.fernet import InvalidToken

from .models import Connection
from .transport.base import Credentials, Reason, Transport, TransportError
from .transport.firehose import FirehoseTransport


def connection_credentials(connection: Connection) -> Credentials:
    """The connection's credentials; TransportError (permanent) when no key decrypts the secret."""
    configuration = connection.configuration
    try:
        secret_access_key = configuration.secret_access_key
    except InvalidToken:
        raise TransportError(
            "SecretNotDecryptable",
            "No key of FIELD_ENCRYPTION_KEYS decrypts the configuration's Secret Access Key: add the key it was "
            "encrypted with to FIELD_ENCRYPTION_KEYS (then run manage.py rotate_encryption_keys), or enter the "
            "secret again in the configuration, then Resume the connection.",
            retryable=False,
            reason=Reason.CREDENTIALS_NOT_USABLE,
        ) from None
    return Credentials(
        access_key_id=configuration.access_key_id,
        secret_access_key=secret_access_key,
        region=connection.region,
        endpoint_url=configuration.endpoint_url,
    )


def connection_transport_class(connection: Connection) -> type[Transport]:
    """The kind of transport, for its limits and names, without the credentials."""
    return FirehoseTransport


def connection_transport(connection: Connection) -> Transport:
    """Raises TransportError when the credentials cannot be used."""
    return connection_transport_class(connection)(connection_credentials(connection), connection.stream_name)
