"""Re-encrypt every stored secret under the first key of FIELD_ENCRYPTION_KEYS.

To rotate: put a new key first in FIELD_ENCRYPTION_KEYS (keep the old ones after it), restart, run this command,
then drop the old keys.
"""

from cryptography.fernet import InvalidToken
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from integrations import crypto
from integrations.models import Configuration

BATCH_SIZE = 500


class Command(BaseCommand):
    help = "Re-encrypt every configuration's Secret Access Key under the first key of FIELD_ENCRYPTION_KEYS."

    def handle(self, *args, **options):
        rotated = 0
        batch: list[tuple[int, str, str]] = []
        configurations = Configuration.objects.only("pk", "name", "encrypted_secret_access_key").order_by("pk")
        for configuration in configurations.iterator(chunk_size=BATCH_SIZE):
            token = configuration.encrypted_secret_access_key
            try:
                batch.append((configuration.pk, token, crypto.rotate(token)))
            except InvalidToken:
                raise CommandError(
                    f"The secret of configuration #{configuration.pk} ({configuration.name}) cannot be decrypted "
                    "with any key in FIELD_ENCRYPTION_KEYS: add the key it was encrypted with, or enter the secret "
                    f"again. {rotated} secret(s) were re-encrypted before it."
                ) from None
            if len(batch) >= BATCH_SIZE:
                rotated += self._save(batch)
                batch = []
        rotated += self._save(batch)
        self.stdout.write(f"Re-encrypted {rotated} secret(s) under the first key of FIELD_ENCRYPTION_KEYS.")

    @staticmethod
    def _save(batch: list[tuple[int, str, str]]) -> int:
        """Write the new tokens; a secret replaced meanwhile (already under the first key) is left as it is."""
        saved = 0
        with transaction.atomic():
            for pk, old_token, new_token in batch:
                saved += Configuration.objects.filter(pk=pk, encrypted_secret_access_key=old_token).update(
                    encrypted_secret_access_key=new_token
                )
        return saved
