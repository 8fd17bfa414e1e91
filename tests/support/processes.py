"""Real processes for end-to-end tests: moto_server as Firehose and S3, Celery worker and beat on the test database;
and Django started in a fresh interpreter, for the tests of the settings."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
from cryptography.fernet import Fernet
from django.conf import settings
from django.db import connection

from .localhost import BASE_DIR, BIN, free_port, port_open, wait_for

VALID_KEY = Fernet.generate_key().decode()


def tests_database_url() -> str:
    """The URL of the database the test runs on, for the processes it starts."""
    details = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{details['NAME']}"
    user = details.get("USER") or "postgres"
    password = f":{details['PASSWORD']}" if details.get("PASSWORD") else ""
    host, port = details.get("HOST") or "127.0.0.1", details.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{details['NAME']}"


def process_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "PYTEST_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="project.test_settings",
        DATABASE_URL=tests_database_url(),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        CACHE_URL=settings.CELERY_BROKER_URL,  # one cache for the worker's processes, as in production
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def started(command: list[str], *, log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=BASE_DIR, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            _stop(process)


@contextmanager
def moto_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with started(command, log=tmp_path / "moto.log", env=process_env()):
        endpoint = f"http://127.0.0.1:{port}"

        wait_for(lambda: port_open(port), timeout=30, what="moto_server")
        yield endpoint


@contextmanager
def celery_worker(tmp_path: Path, *, name: str = "worker", concurrency: int = 2) -> Iterator[subprocess.Popen]:
    command = [
        str(BIN / "celery"), "-A", "project", "worker", "-l", "info", "-n", f"{name}@%h",
        "--concurrency", str(concurrency), "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    with started(command, log=tmp_path / f"{name}.log", env=process_env()) as process:
        yield process


@contextmanager
def celery_beat(tmp_path: Path) -> Iterator[subprocess.Popen]:
    schedule = tmp_path / "beat-schedule"
    command = [str(BIN / "celery"), "-A", "project", "beat", "-l", "info", "-s", str(schedule)]
    with started(command, log=tmp_path / "beat.log", env=process_env()) as process:
        yield process


def firehose_stream(endpoint: str, *, stream: str, bucket: str) -> None:
    options = dict(
        endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    boto3.client("s3", **options).create_bucket(Bucket=bucket)
    boto3.client("firehose", **options).create_delivery_stream(
        DeliveryStreamName=stream,
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::123456789012:role/firehose",
            "BucketARN": f"arn:aws:s3:::{bucket}",
        },
    )


def bucket_objects(endpoint: str, bucket: str) -> list[bytes]:
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            objects.append(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
    return objects


def available() -> bool:
    return shutil.which(str(BIN / "moto_server")) is not None and shutil.which(str(BIN / "celery")) is not None


def start(code: str = "import django; django.setup()", **variables: str) -> subprocess.CompletedProcess:
    """Start Django with project.settings in a fresh interpreter, with only the given environment. The variables
    are always set (maybe to ""), so that a developer's .env, read without overwriting, cannot fill them in."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DEBUG": "false",
        "SECRET_KEY": "a-long-random-production-secret-key-for-this-test",
        "FIELD_ENCRYPTION_KEYS": VALID_KEY,
        **variables,
    }
    return subprocess.run(
        [sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
