from django.core.management.base import BaseCommand, CommandError

from api.models import ApiKey
from api.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key and print it once. Only its hash is stored."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument(
            "--scopes",
            default="ingest",
            help="Comma-separated: ingest (changes and users), manage (everything else). Default: ingest.",
        )

    def handle(self, *args, name: str, scopes: str, **options):
        requested = [scope.strip() for scope in scopes.split(",") if scope.strip()]
        known = set(ApiKey.Scope.values)
        unknown = [scope for scope in requested if scope not in known]
        if unknown or not requested:
            raise CommandError(f"Unknown scopes {unknown or scopes!r}: use ingest, manage or ingest,manage.")
        if not name.strip():
            raise CommandError("The name must not be blank.")
        _, key = api_key_create(name=name, scopes=requested)
        self.stdout.write(key)
