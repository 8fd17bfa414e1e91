"""Print the records that Firehose delivered to the demo S3 bucket, oldest object first.

Firehose concatenates the records of a request into one S3 object; with Append Newline on (the default) every record
ends with `\\n`, so an object is newline-delimited JSON. Records sent without the newline stay glued together on one
line, exactly as a consumer of the bucket would see them. S3 keeps object times to the second: objects written in the
same second are listed by key.
"""

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.core.management.base import BaseCommand, CommandError

from .demo_setup import DEMO_ACCESS_KEY_ID, DEMO_BUCKET, DEMO_ENDPOINT_URL, DEMO_REGION, DEMO_SECRET_ACCESS_KEY


class Command(BaseCommand):
    help = "List the objects in the demo S3 bucket and print every record line in them, oldest first."

    def add_arguments(self, parser):
        parser.add_argument("--bucket", default=DEMO_BUCKET)
        parser.add_argument("--endpoint-url", default=DEMO_ENDPOINT_URL, help="Empty for real AWS.")
        parser.add_argument("--region", default=DEMO_REGION)

    def handle(self, *args, bucket: str, endpoint_url: str, region: str, **options):
        s3 = self._client(endpoint_url, region)
        try:
            objects = self._objects(s3, bucket)
            if not objects:
                self.stdout.write(f"No records in s3://{bucket} yet.")
                return
            count = 0
            for item in objects:
                body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                for line in body.decode("utf-8", errors="replace").splitlines():
                    if line:
                        self.stdout.write(f"{item['Key']}  {line}")
                        count += 1
        except (BotoCoreError, ClientError) as error:
            where = endpoint_url or "AWS"
            raise CommandError(f"Could not read s3://{bucket} at {where}: {error}") from None
        self.stdout.write(f"{count} record line(s) in {len(objects)} object(s) of s3://{bucket}.")

    @staticmethod
    def _client(endpoint_url: str, region: str):
        options = {}
        if endpoint_url:
            # The local emulator takes any credentials; against AWS, boto3 finds them as usual.
            options = dict(
                endpoint_url=endpoint_url,
                aws_access_key_id=DEMO_ACCESS_KEY_ID,
                aws_secret_access_key=DEMO_SECRET_ACCESS_KEY,
            )
        return boto3.session.Session().client(
            "s3", region_name=region, config=Config(retries={"max_attempts": 2}, connect_timeout=3), **options
        )

    @staticmethod
    def _objects(s3, bucket: str) -> list[dict]:
        objects = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            objects.extend(page.get("Contents", []))
        return sorted(objects, key=lambda item: (item["LastModified"], item["Key"]))
