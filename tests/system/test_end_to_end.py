"""End to end with real parts: the API feeds changes, a real Celery worker and beat (Redis broker, the test
database) deliver them to a moto_server process, and the records are read back from its S3 destination."""

import pytest
import redis
from django.conf import settings
from rest_framework.test import APIClient

from api.services import api_key_create
from integrations.models import Connection, SystemAlert

from ..factories import ACCESS_KEY_ID, SECRET_ACCESS_KEY
from ..support.emulator import decode_records
from ..support.processes import bucket_objects, celery_beat, celery_worker, firehose_stream, moto_server, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

STREAM, BUCKET = "e2e-stream", "e2e-records"


@pytest.fixture
def broker() -> redis.Redis:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()


def test_changes_fed_through_the_api_arrive_in_the_stream(tmp_path, broker):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(name='e2e', scopes=['ingest', 'manage'])[1]}")

    with moto_server(tmp_path) as endpoint:
        firehose_stream(endpoint, stream=STREAM, bucket=BUCKET)
        audience_id = api.post(
            "/api/v1/audiences", {"internal_name": "e2e", "external_name": "EndToEnd"}, format="json"
        ).json()["id"]
        configuration_id = api.post(
            "/api/v1/configurations",
            {
                "name": "local",
                "access_key_id": ACCESS_KEY_ID,
                "secret_access_key": SECRET_ACCESS_KEY,
                "endpoint_url": endpoint,
            },
            format="json",
        ).json()["id"]
        connection_id = api.post(
            "/api/v1/connections",
            {"audience": audience_id, "configuration": configuration_id, "stream_name": STREAM},
            format="json",
        ).json()["id"]

        first = [
            {
                "user_id": f"user-{n}",
                "is_member": True,
                "identities": {"CustomerId": f"c{n}"},
                "timestamp": 1_700_000_000,
            }
            for n in range(300)
        ]
        response = api.post(f"/api/v1/audiences/{audience_id}/changes", {"changes": first}, format="json")
        assert response.status_code == 202 and response.json() == {"accepted": 300, "ignored": 0}
        broker.flushdb()  # the kicks are lost: the beat sweep has to find the backlog in the database

        with celery_worker(tmp_path), celery_beat(tmp_path):

            def arrived() -> list[dict]:
                return [record for data in bucket_objects(endpoint, BUCKET) for record in decode_records(data)]

            wait_for(lambda: len(arrived()) >= 300, timeout=60, interval=0.5, what="the first 300 records")

            second = [
                {"user_id": f"user-{n}", "is_member": False, "timestamp": 1_700_000_100} for n in range(0, 300, 3)
            ]
            response = api.post(f"/api/v1/audiences/{audience_id}/changes", {"changes": second}, format="json")
            assert response.json() == {"accepted": 100, "ignored": 0}
            api.put("/api/v1/users/user-1", {"identities": {"CustomerId": "c1-new"}}, format="json")

            def all_arrived() -> list[dict] | None:
                records = arrived()
                return records if len(records) >= 402 else None

            records = wait_for(all_arrived, timeout=60, interval=0.5, what="402 records")

    assert len(records) == 402
    joins = [r for r in records if r["IsMember"] and r["MembershipChangedTimestamp"] == "1700000000"]
    leaves = [r for r in records if not r["IsMember"] and r["MembershipChangedTimestamp"] == "1700000100"]
    assert sorted(r["UserIdentities"]["CustomerId"] for r in joins) == sorted(f"c{n}" for n in range(300))
    assert sorted(r["UserIdentities"]["CustomerId"] for r in leaves) == sorted(f"c{n}" for n in range(0, 300, 3))
    # S3 listing order is not arrival order, so the identity change is checked as a set here (order: test_wire_format)
    identity_change = [
        (r["IsMember"], r["UserIdentities"])
        for r in records
        if r["UserIdentities"].get("CustomerId") in ("c1", "c1-new")
    ]
    assert sorted(identity_change, key=repr) == sorted(
        [(True, {"CustomerId": "c1"}), (False, {"CustomerId": "c1"}), (True, {"CustomerId": "c1-new"})], key=repr
    )
    assert all(r["AudienceId"] == audience_id and r["AudienceName"] == "EndToEnd" for r in records)
    connection = Connection.objects.get(pk=connection_id)
    assert connection.status == "active" and connection.delivered_count == 402
    assert not SystemAlert.objects.exists()
