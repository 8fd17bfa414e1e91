"""Demo data for `make run`: a superuser, a stream in the local Firehose emulator, and an audience connected to it.

Safe to run again: it creates what is missing and leaves the rest. moto keeps its state in memory, so the bucket and
the stream are created again after the emulator restarted, and the demo connection then resyncs into them.
"""

import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from api.models import ApiKey
from api.services import api_key_create
from audiences.models import Audience
from audiences.services import ChangeIn, audience_create, membership_changes_apply
from integrations.configurations import configuration_create
from integrations.connections import connection_create, connection_resume, connection_resync
from integrations.models import Configuration, Connection
from integrations.outbox import OUTBOX

DEMO_ENDPOINT_URL = "http://127.0.0.1:4566"
DEMO_REGION = "us-east-1"
DEMO_ACCESS_KEY_ID = "AKIADEMOEXAMPLE00001"
DEMO_SECRET_ACCESS_KEY = "demo/secret/for/the/local/emulator/only"
DEMO_BUCKET = "demo-audience-records"
DEMO_STREAM = "demo-audience-stream"
DEMO_ROLE_ARN = "arn:aws:iam::123456789012:role/firehose-demo"
DEMO_CONFIGURATION = "Demo (local emulator)"
DEMO_AUDIENCE = "LowEngagement"
DEMO_API_KEY = "Demo key"
DEMO_USERNAME = "admin"
DEMO_PASSWORD = "admin"
DEMO_MEMBERS = [
    ("p.fogg138", {"CustomerId": "p.fogg138", "Email": "phileas@travelers.com"}),
    ("passepartout", {"CustomerId": "passepartout", "Email": "jean@travelers.com"}),
    ("a.aouda", {"CustomerId": "a.aouda", "Email": "aouda@travelers.com"}),
    ("r.fix", {"CustomerId": "r.fix", "AppleAdvertisingIdentifier": "6D92078A-8246-4BA4-AE5B-76104861E7DC"}),
    ("anonymous-42", {}),
]


def emulator_client(service: str, endpoint_url: str):
    return boto3.session.Session().client(
        service,
        region_name=DEMO_REGION,
        endpoint_url=endpoint_url,
        aws_access_key_id=DEMO_ACCESS_KEY_ID,
        aws_secret_access_key=DEMO_SECRET_ACCESS_KEY,
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )


class Command(BaseCommand):
    help = "Create the demo superuser, stream, audience, connection and API key for local development."

    def add_arguments(self, parser):
        parser.add_argument("--endpoint-url", default=DEMO_ENDPOINT_URL, help="The local Firehose and S3 emulator.")
        parser.add_argument("--wait", type=float, default=30.0, help="Seconds to wait for the emulator to answer.")

    def handle(self, *args, endpoint_url: str, wait: float, **options):
        self._superuser()
        self._wait_for_emulator(endpoint_url, wait)
        stream_created = self._emulator_resources(endpoint_url)
        connection = self._demo_data(endpoint_url, stream_created=stream_created)
        self._api_key()
        self._pointers(connection)

    # --- steps ----------------------------------------------------------------------------------------------

    def _superuser(self) -> None:
        if not settings.DEBUG:
            self.stdout.write("DEBUG is off: no demo superuser. Create one with `python manage.py createsuperuser`.")
            return
        user, created = get_user_model().objects.get_or_create(username=DEMO_USERNAME)
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(DEMO_PASSWORD)
        user.save()
        verb = "Created" if created else "Reset"
        self.stdout.write(f"{verb} the demo superuser: {DEMO_USERNAME} / {DEMO_PASSWORD}")

    def _wait_for_emulator(self, endpoint_url: str, wait: float) -> None:
        s3 = emulator_client("s3", endpoint_url)
        deadline = time.monotonic() + wait
        while True:
            try:
                s3.list_buckets()
                return
            except (BotoCoreError, ClientError) as error:
                if time.monotonic() >= deadline:
                    raise CommandError(
                        f"The Firehose emulator at {endpoint_url} did not answer within {wait:g} s ({error}). "
                        "Start it with `moto_server -H 127.0.0.1 -p 4566`."
                    ) from None
            time.sleep(0.25)

    def _emulator_resources(self, endpoint_url: str) -> bool:
        """Create the bucket and the stream when missing. Returns True when the stream was (re)created."""
        s3 = emulator_client("s3", endpoint_url)
        buckets = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
        if DEMO_BUCKET not in buckets:
            s3.create_bucket(Bucket=DEMO_BUCKET)
        firehose = emulator_client("firehose", endpoint_url)
        if DEMO_STREAM in firehose.list_delivery_streams(Limit=100)["DeliveryStreamNames"]:
            return False
        firehose.create_delivery_stream(
            DeliveryStreamName=DEMO_STREAM,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "BucketARN": f"arn:aws:s3:::{DEMO_BUCKET}",
                "RoleARN": DEMO_ROLE_ARN,
            },
        )
        self.stdout.write(f"Created the delivery stream {DEMO_STREAM} into the bucket {DEMO_BUCKET} at {endpoint_url}.")
        return True

    @transaction.atomic
    def _demo_data(self, endpoint_url: str, *, stream_created: bool) -> Connection:
        configuration = Configuration.objects.filter(name=DEMO_CONFIGURATION).first()
        if configuration is None:
            configuration = configuration_create(
                name=DEMO_CONFIGURATION,
                access_key_id=DEMO_ACCESS_KEY_ID,
                secret_access_key=DEMO_SECRET_ACCESS_KEY,
                endpoint_url=endpoint_url,
            )
            self.stdout.write(f"Created the configuration {configuration.name!r}.")

        audience = Audience.objects.live().filter(internal_name=DEMO_AUDIENCE).order_by("pk").first()
        if audience is None:
            audience = audience_create(internal_name=DEMO_AUDIENCE)
            membership_changes_apply(
                audience=audience,
                changes=[
                    ChangeIn(user_id=user_id, is_member=True, identities=identities)
                    for user_id, identities in DEMO_MEMBERS
                ],
                outbox=OUTBOX,
            )
            self.stdout.write(f"Created the audience {audience.internal_name!r} (id {audience.pk}) with members.")

        connection = Connection.objects.filter(
            audience=audience, configuration=configuration, stream_name=DEMO_STREAM
        ).first()
        if connection is None:
            connection = connection_create(
                audience=audience, configuration=configuration, stream_name=DEMO_STREAM, region=DEMO_REGION
            )
            self.stdout.write(f"Connected it to {DEMO_STREAM}: the initial sync sends every member.")
            return connection
        if connection.status == Connection.Status.FAULTED:
            connection = connection_resume(connection=connection)
            self.stdout.write("Resumed the faulted demo connection.")
        if stream_created and connection.status == Connection.Status.ACTIVE:
            # The emulator restarted empty: send the current members again into the new bucket.
            connection = connection_resync(connection=connection)
            self.stdout.write("The emulator was empty: resyncing the demo connection into the new stream.")
        return connection

    def _api_key(self) -> None:
        existing = ApiKey.objects.filter(name=DEMO_API_KEY, revoked_at__isnull=True).first()
        if existing is not None:
            self.stdout.write(
                f"The API key {existing} exists already; keys are shown only once. For a new one run "
                "`python manage.py create_api_key NAME --scopes ingest,manage`."
            )
            return
        _, key = api_key_create(name=DEMO_API_KEY, scopes=[ApiKey.Scope.INGEST, ApiKey.Scope.MANAGE])
        self.stdout.write(f"Created an API key with scopes ingest,manage (shown only this once): {key}")

    def _pointers(self, connection: Connection) -> None:
        login = f" (log in as {DEMO_USERNAME} / {DEMO_PASSWORD})" if settings.DEBUG else ""
        self.stdout.write(
            self.style.SUCCESS(
                "\nReady.\n"
                f"  Admin:    http://127.0.0.1:8000/admin/{login}\n"
                f"  API docs: http://127.0.0.1:8000/api/docs/\n"
                f"  Demo:     audience {connection.audience_id} -> connection {connection.pk} -> stream {DEMO_STREAM}\n"
                "  Records delivered to the emulated S3 bucket: `python manage.py demo_records` (or `make records`)\n"
            )
        )
