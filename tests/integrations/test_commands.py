"""The management commands of integrations that an operator runs: rotate_encryption_keys and demo_records."""

import json
import time

import boto3
import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.core.management import CommandError
from django.test import override_settings

from integrations.configurations import configuration_create
from integrations.models import Configuration

from ..support.commands import run

OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()
UNKNOWN_KEY = Fernet.generate_key().decode()


def make_configuration(name: str, secret: str) -> Configuration:
    return configuration_create(name=name, access_key_id="AKIAEXAMPLE000000001", secret_access_key=secret)


# --- rotate_encryption_keys -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_reencrypts_every_secret_under_the_first_key():
    with override_settings(FIELD_ENCRYPTION_KEYS=[OLD_KEY]):
        make_configuration("one", "secret-one")
        make_configuration("two", "secret-two")

    with override_settings(FIELD_ENCRYPTION_KEYS=[NEW_KEY, OLD_KEY]):
        output = run("rotate_encryption_keys")

    assert "Re-encrypted 2 secret(s)" in output
    with override_settings(FIELD_ENCRYPTION_KEYS=[NEW_KEY]):
        secrets = {c.name: c.secret_access_key for c in Configuration.objects.all()}
    assert secrets == {"one": "secret-one", "two": "secret-two"}


@pytest.mark.django_db
def test_the_old_key_alone_no_longer_decrypts_after_rotation():
    with override_settings(FIELD_ENCRYPTION_KEYS=[OLD_KEY]):
        make_configuration("one", "secret-one")
    with override_settings(FIELD_ENCRYPTION_KEYS=[NEW_KEY, OLD_KEY]):
        run("rotate_encryption_keys")

    with override_settings(FIELD_ENCRYPTION_KEYS=[OLD_KEY]), pytest.raises(InvalidToken):
        Configuration.objects.get().secret_access_key  # noqa: B018


@pytest.mark.django_db
def test_it_rotates_more_secrets_than_one_batch():
    from integrations.management.commands import rotate_encryption_keys

    with override_settings(FIELD_ENCRYPTION_KEYS=[OLD_KEY]):
        for number in range(7):
            make_configuration(f"config {number}", f"secret {number}")

    with (
        override_settings(FIELD_ENCRYPTION_KEYS=[NEW_KEY, OLD_KEY]),
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setattr(rotate_encryption_keys, "BATCH_SIZE", 3)
        output = run("rotate_encryption_keys")

    assert "Re-encrypted 7 secret(s)" in output
    with override_settings(FIELD_ENCRYPTION_KEYS=[NEW_KEY]):
        assert sorted(c.secret_access_key for c in Configuration.objects.all()) == [f"secret {n}" for n in range(7)]


@pytest.mark.django_db
def test_it_stops_with_a_clear_error_when_no_key_decrypts_a_secret():
    with override_settings(FIELD_ENCRYPTION_KEYS=[UNKNOWN_KEY]):
        lost = make_configuration("lost", "secret")
    token = Configuration.objects.get(pk=lost.pk).encrypted_secret_access_key

    with override_settings(FIELD_ENCRYPTION_KEYS=[NEW_KEY, OLD_KEY]), pytest.raises(CommandError) as error:
        run("rotate_encryption_keys")

    assert "cannot be decrypted with any key in FIELD_ENCRYPTION_KEYS" in str(error.value)
    assert "lost" in str(error.value)
    assert Configuration.objects.get(pk=lost.pk).encrypted_secret_access_key == token


@pytest.mark.django_db
def test_rotation_never_prints_a_secret():
    with override_settings(FIELD_ENCRYPTION_KEYS=[OLD_KEY]):
        make_configuration("one", "do-not-print-me")
    with override_settings(FIELD_ENCRYPTION_KEYS=[NEW_KEY, OLD_KEY]):
        output = run("rotate_encryption_keys")
    assert "do-not-print-me" not in output


# --- demo_records -----------------------------------------------------------------------------------------------

BUCKET = "records-under-test"
STREAM = "stream-under-test"


@pytest.fixture
def delivered(aws):
    """A bucket in moto's S3 that a Firehose stream delivers to: (s3 client, firehose client)."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    firehose = boto3.client("firehose", region_name="us-east-1")
    firehose.create_delivery_stream(
        DeliveryStreamName=STREAM,
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "BucketARN": f"arn:aws:s3:::{BUCKET}",
            "RoleARN": "arn:aws:iam::123456789012:role/firehose-test",
        },
    )
    return s3, firehose


def record(user: str, is_member: bool = True) -> bytes:
    data = {
        "MembershipChangedTimestamp": "1700000000",
        "AudienceId": 7,
        "AudienceName": "LowEngagement",
        "IsMember": is_member,
        "UserIdentities": {"CustomerId": user},
    }
    return (json.dumps(data) + "\n").encode()


def read_records(**options) -> list[str]:
    output = run("demo_records", bucket=BUCKET, endpoint_url="", **options)
    return output.splitlines()


def test_demo_records_prints_every_record_of_a_batch_on_its_own_line(delivered):
    _, firehose = delivered
    firehose.put_record_batch(
        DeliveryStreamName=STREAM, Records=[{"Data": record("alice")}, {"Data": record("bob", is_member=False)}]
    )

    lines = read_records()

    records = [json.loads(line.split("  ", 1)[1]) for line in lines[:-1]]
    assert [(r["UserIdentities"]["CustomerId"], r["IsMember"]) for r in records] == [("alice", True), ("bob", False)]
    key = lines[0].split("  ", 1)[0]
    assert key.split("/")[-1].startswith(f"{STREAM}-")
    assert lines[-1] == f"2 record line(s) in 1 object(s) of s3://{BUCKET}."


def test_demo_records_lists_the_oldest_object_first(delivered):
    s3, _ = delivered
    s3.put_object(Bucket=BUCKET, Key="z-written-first", Body=record("first"))
    time.sleep(1.1)  # S3 keeps object times to the second
    s3.put_object(Bucket=BUCKET, Key="a-written-second", Body=record("second"))

    lines = read_records()

    assert [line.split("  ")[0] for line in lines[:-1]] == ["z-written-first", "a-written-second"]


def test_demo_records_says_so_when_the_bucket_is_empty(delivered):
    assert read_records() == [f"No records in s3://{BUCKET} yet."]


def test_demo_records_explains_a_missing_bucket(delivered):
    with pytest.raises(CommandError, match="Could not read s3://no-such-bucket"):
        run("demo_records", bucket="no-such-bucket", endpoint_url="")
