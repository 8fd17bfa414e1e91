"""The naive design, for the benchmark's baseline row: one Celery task and one PutRecord per change.

    NAIVE_BROKER_URL=redis://127.0.0.1:6379/1 celery -A bench.naive worker

(CELERY_BROKER_URL, when set, overrides NAIVE_BROKER_URL: Celery reads it first.)

Each task carries its change, builds its record with the product's own `membership_record` (no database needed)
and sends it with one boto3 `put_record`. There is no outbox, no batching and no ordering: what a broker loses is
lost. The boto3 client is cached per process, so the baseline pays for requests, not for building clients.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3
from celery import Celery

from integrations.records import membership_record

app = Celery("naive", broker=os.environ.get("NAIVE_BROKER_URL", "redis://127.0.0.1:6379/1"))
app.conf.update(
    task_default_queue="naive",  # never the product's queue, even on a shared broker
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@cache
def firehose_client(endpoint_url: str) -> Any:
    return boto3.session.Session().client(
        "firehose",
        region_name="us-east-1",
        endpoint_url=endpoint_url,
        aws_access_key_id="AKIABENCHMARKNAIVE01",
        aws_secret_access_key="bench/naive",
    )


@app.task(name="naive.put_change")
def put_change(
    endpoint_url: str,
    stream: str,
    audience_id: int,
    audience_name: str,
    is_member: bool,
    identities: dict[str, str],
    timestamp: int,
) -> None:
    record = membership_record(
        timestamp=timestamp,
        audience_id=audience_id,
        audience_name=audience_name,
        is_member=is_member,
        identities=identities,
        append_newline=True,
    )
    firehose_client(endpoint_url).put_record(DeliveryStreamName=stream, Record={"Data": record})
