"""The AWS edge for tests: a moto Firehose stream whose S3 destination is read back and decoded.

moto writes each PutRecordBatch/PutRecord call as one S3 object holding the concatenated record data, so the
objects, in the order moto stored them, are the calls in arrival order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.exceptions import JsonRESTError
from moto.firehose.models import FirehoseBackend
from moto.s3.models import s3_backends

REGION = "us-east-1"


class ServiceUnavailable(JsonRESTError):
    code = 503

    def __init__(self) -> None:
        super().__init__("ServiceUnavailableException", "Slow down. Rate exceeded for delivery stream.")


def decode_records(data: bytes) -> list[dict]:
    """Split concatenated JSON records (newline-delimited or bare) into objects, keeping the key order."""
    decoder = json.JSONDecoder()
    text = data.decode("utf-8")
    records, position = [], 0
    while position < len(text):
        if text[position].isspace():
            position += 1
            continue
        record, position = decoder.raw_decode(text, position)
        records.append(record)
    return records


def customer_ids(records: list[dict]) -> list[str]:
    return [record["UserIdentities"]["CustomerId"] for record in records]


@dataclass
class EmulatedStream:
    name: str = "audience-stream"
    bucket: str = "audience-records"
    region: str = REGION

    def create(self) -> EmulatedStream:
        boto3.client("s3", region_name=self.region).create_bucket(Bucket=self.bucket)
        boto3.client("firehose", region_name=self.region).create_delivery_stream(
            DeliveryStreamName=self.name,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/firehose",
                "BucketARN": f"arn:aws:s3:::{self.bucket}",
            },
        )
        return self

    def objects(self) -> list[bytes]:
        """Every object of the destination bucket, in the order moto stored them (the order of the calls)."""
        bucket = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets[self.bucket]
        return [key.value for key in bucket.keys.values()]

    def raw(self) -> bytes:
        return b"".join(self.objects())

    def records(self) -> list[dict]:
        return [record for data in self.objects() for record in decode_records(data)]

    def records_by_call(self) -> list[list[dict]]:
        return [decode_records(data) for data in self.objects()]


@contextmanager
def firehose_behaviour(
    monkeypatch: pytest.MonkeyPatch,
    batch: Callable[[Callable, str, list[dict[str, Any]]], dict] | None = None,
) -> Iterator[None]:
    """Replace what the emulated Firehose does on PutRecordBatch. `batch(original, stream, records)` decides."""
    original = FirehoseBackend.put_record_batch

    def put_record_batch(self: FirehoseBackend, delivery_stream_name: str, records: list[dict]) -> dict:
        return batch(lambda name, items: original(self, name, items), delivery_stream_name, records)

    if batch is not None:
        monkeypatch.setattr(FirehoseBackend, "put_record_batch", put_record_batch)
    yield
    monkeypatch.setattr(FirehoseBackend, "put_record_batch", original)


def throttle_first(count: int, calls: list[int]) -> Callable:
    """Answer ServiceUnavailableException to the first `count` calls, then accept."""

    def batch(original: Callable, name: str, records: list[dict]) -> dict:
        calls.append(len(records))
        if len(calls) <= count:
            raise ServiceUnavailable()
        return original(name, records)

    return batch


def fail_entries(indexes_per_call: list[set[int]], calls: list[list[bytes]]) -> Callable:
    """Fail the given entries of each call with InternalFailure (HTTP 200, FailedPutCount > 0); store the rest."""

    def batch(original: Callable, name: str, records: list[dict]) -> dict:
        calls.append([record["Data"] for record in records])
        failing = indexes_per_call[len(calls) - 1] if len(calls) <= len(indexes_per_call) else set()
        kept = [record for index, record in enumerate(records) if index not in failing]
        stored = original(name, kept)["RequestResponses"] if kept else []
        responses, stored_iter = [], iter(stored)
        for index in range(len(records)):
            if index in failing:
                responses.append({"ErrorCode": "InternalFailure", "ErrorMessage": "Internal service failure."})
            else:
                responses.append(next(stored_iter))
        return {
            "FailedPutCount": len(failing & set(range(len(records)))),
            "Encrypted": False,
            "RequestResponses": responses,
        }

    return batch
