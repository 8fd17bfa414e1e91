"""The admin at scale: `make bench-admin`.

Starts a private PostgreSQL, fills it with one audience of 1,000,000 members (users, memberships and their joins)
and 10,000,000 deliveries over 4 connections (1% pending, 0.1% failed, the rest delivered), delivery attempts, hourly
stats and alerts, straight in SQL. Then it asks every operator page and /metrics as a logged-in superuser (Django's
test client, in this process) and prints, per page, the median time of 5 requests, the number of queries and the
slowest query. Figures only: nothing is asserted here (tests/console/test_operator_views.py checks the query counts).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from tests.faults.cluster import PostgreSQL  # noqa: E402

CONNECTIONS = 4


def seed(cursor, members: int, deliveries: int) -> None:
    """Everything in SQL, in a few statements: the rows the product would have written, without sending them."""
    per_connection = deliveries // CONNECTIONS
    statements = [
        f"""INSERT INTO audiences_user (external_id, identities, created_at, updated_at)
            SELECT 'user-' || g, '{{"Email": "u' || g || '@example.com", "CustomerId": "c' || g || '"}}', now(), now()
            FROM generate_series(1, {members}) g""",
        """INSERT INTO audiences_membership (audience_id, user_id, is_member, last_changed_timestamp, updated_at)
            SELECT 1, id, true, 1795856960, now() FROM audiences_user ORDER BY id""",
        """INSERT INTO audiences_membershipchange (audience_id, user_id, kind, timestamp, identities, created_at)
            SELECT 1, id, 1, 1795856960, identities, now() FROM audiences_user ORDER BY id""",
        f"UPDATE audiences_audience SET member_count = {members} WHERE id = 1",
        f"""INSERT INTO integrations_deliveryattempt (connection_id, operation, records, failed_records, bytes, outcome,
                error_code, error_message, started_at, duration_ms)
            SELECT 1 + g % {CONNECTIONS}, 'PutRecordBatch', 500, 0, 120000, 'delivered', '', '',
                now() - (g || ' seconds')::interval, 40
            FROM generate_series(1, {deliveries // 500}) g""",
        f"""INSERT INTO integrations_delivery (connection_id, shard, kind, change_id, user_id, is_member,
                uses_previous_identities, timestamp, status, attempts, next_attempt_at, last_error, created_at,
                delivered_at, last_attempt_id)
            SELECT c.id, u % 4, 1, u, u, true, false, 1795856960,
                CASE WHEN g % 100 = 0 THEN 1 WHEN g % 1000 = 1 THEN 4 ELSE 2 END,
                1, now(), '', now() - ((({per_connection} - g) / 1000) || ' seconds')::interval, now(),
                1 + g / 500
            FROM integrations_connection c, generate_series(1, {per_connection}) g,
                LATERAL (SELECT 1 + g % {members} AS u) users
""",
        """INSERT INTO integrations_deliverystats (connection_id, hour, delivered, failed, retried, latency_sum_ms,
                latency_le_100ms, latency_le_250ms, latency_le_500ms, latency_le_1s, latency_le_2500ms, latency_le_5s,
                latency_le_10s, latency_le_30s, latency_le_1m, latency_le_5m, latency_le_30m, latency_over_30m)
            SELECT c.id, date_trunc('hour', now()) - (h || ' hours')::interval, 100000, 100, 100, 20000000,
                10000, 60000, 20000, 9000, 1000, 0, 0, 0, 0, 0, 0, 0
            FROM integrations_connection c, generate_series(0, 23) h""",
        """INSERT INTO integrations_systemalert (connection_id, type, count, first_seen, last_seen, last_message,
                sample_record, acknowledged, acknowledged_at, resolved_at)
            SELECT c.id, t.type, 50, now() - interval '3 days', now(), 'Firehose answered 500', '', false, NULL, NULL
            FROM integrations_connection c,
                (VALUES ('500 - Internal Server Error'), ('Retry Limit Exceeded')) t(type)""",
        """INSERT INTO integrations_alerthourlycount (alert_id, hour, count)
            SELECT a.id, date_trunc('hour', now()) - (h || ' hours')::interval, 1 + (a.id + h) % 5
            FROM integrations_systemalert a, generate_series(0, 167) h""",
        "VACUUM ANALYZE",  # what autovacuum does to rows this old: the visibility map lets counts skip the heap
    ]
    for sql in statements:
        started = time.monotonic()
        cursor.execute(sql)
        print(f"  {time.monotonic() - started:6.1f} s  {' '.join(sql.split())[:90]}", flush=True)


def measure(client, path: str, repeats: int = 5) -> tuple[float, int, float]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times, queries, slowest = [], 0, 0.0
    for _ in range(repeats):
        with CaptureQueriesContext(connection) as captured:
            started = time.monotonic()
            response = client.get(path)
            times.append(time.monotonic() - started)
        if response.status_code != 200:
            raise SystemExit(f"{path} answered {response.status_code}")
        queries = len(captured)
        slowest = max([slowest, *(float(query["time"]) for query in captured.captured_queries)])
    return statistics.median(times), queries, slowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--deliveries", type=int, default=10_000_000)
    options = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="firehose-admin-scale-"))
    os.chmod(root, 0o755)
    postgres = PostgreSQL(root)
    try:
        os.environ.update(
            DJANGO_SETTINGS_MODULE="project.settings",
            DEBUG="false",
            SECRET_KEY="admin-scale-bench",
            FIELD_ENCRYPTION_KEYS="Jz1H0yhqPaF1jeSSoUi6vN4ez8HdDDQHO4FrUt8ht4E=",
            ALLOWED_HOSTS="testserver",
            DATABASE_URL=postgres.url,
            CELERY_BROKER_URL="redis://127.0.0.1:1/0",  # no broker: kicks fail fast and are skipped
            CACHE_URL="locmemcache://",
            METRICS_PUBLIC="true",
            METRICS_CACHE_SECONDS="0",  # time the computation itself, not the per-process cache
        )
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client

        from audiences.services import audience_create
        from integrations.configurations import configuration_create
        from integrations.models import Connection

        call_command("migrate", verbosity=0)
        audience = audience_create(internal_name="everyone")
        configuration = configuration_create(
            name="Scale", access_key_id="AKIAIOSFODNN7EXAMPLE", secret_access_key="not-used-here"
        )
        Connection.objects.bulk_create(
            Connection(audience=audience, configuration=configuration, stream_name=f"stream-{n}")
            for n in range(CONNECTIONS)
        )
        print(f"Seeding {options.members:,} members and {options.deliveries:,} deliveries:", flush=True)
        with connection.cursor() as cursor:
            seed(cursor, options.members, options.deliveries)
        admin = get_user_model().objects.create_superuser("admin", "admin@example.com", "admin")
        client = Client()
        client.force_login(admin)
        user = f"user-{options.members // 2}"
        from audiences.models import User

        user_pk = User.objects.get(external_id=user).pk
        pages = [
            ("admin index (health summary)", "/admin/"),
            ("connections", "/admin/integrations/connection/"),
            ("connection page", "/admin/integrations/connection/1/change/"),
            ("resync progress (JSON)", "/admin/integrations/connection/1/progress/"),
            ("System Alerts, 12 h", "/admin/integrations/systemalert/"),
            ("System Alerts, 7 d", "/admin/integrations/systemalert/?window=7d"),
            ("System Alerts, one connection", "/admin/integrations/systemalert/?connection__id__exact=1"),
            ("delivery log", "/admin/integrations/delivery/"),
            ("delivery log, one connection", "/admin/integrations/delivery/?connection__id__exact=1"),
            ("delivery log, failed", "/admin/integrations/delivery/?connection__id__exact=1&status__exact=4"),
            ("delivery log, one user", f"/admin/integrations/delivery/?user_id={user}"),
            ("delivery log, last hour", "/admin/integrations/delivery/?time=1h"),
            ("delivery log, page 50", "/admin/integrations/delivery/?connection__id__exact=1&p=50"),
            ("delivery attempts", "/admin/integrations/deliveryattempt/"),
            ("audience page", f"/admin/audiences/audience/{audience.pk}/change/"),
            ("members", f"/admin/audiences/audience/{audience.pk}/members/"),
            ("members, search", f"/admin/audiences/audience/{audience.pk}/members/?q=user-4242"),
            ("users, search", f"/admin/audiences/user/?q={user}"),
            ("user page", f"/admin/audiences/user/{user_pk}/change/"),
            ("user's changes", f"/admin/audiences/user/{user_pk}/changes/"),
            ("/metrics", "/metrics"),
        ]
        print("\n| page | median of 5 | queries | slowest query |\n|---|---|---|---|")
        for label, path in pages:
            median, queries, slowest = measure(client, path)
            print(f"| {label} | {median * 1000:.0f} ms | {queries} | {slowest * 1000:.0f} ms |", flush=True)
    finally:
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
