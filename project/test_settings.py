"""Settings for the test suite: fixed throwaway keys, fast retries. Everything else comes from project.settings."""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production")
os.environ.setdefault("FIELD_ENCRYPTION_KEYS", "Jz1H0yhqPaF1jeSSoUi6vN4ez8HdDDQHO4FrUt8ht4E=")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("FIREHOSE_BACKOFF_BASE_SECONDS", "0.05")
os.environ.setdefault("FIREHOSE_BACKOFF_CAP_SECONDS", "1")
os.environ.setdefault("FIREHOSE_RETRY_LIMIT", "3")
os.environ.setdefault("SWEEP_INTERVAL_SECONDS", "1")
# A cache of this process only: failed-authentication counters must not carry over between concurrent test runs.
os.environ.setdefault("CACHE_URL", "locmemcache://")

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# In-process tests see one shard, so that batches hold the whole backlog in id order; tests/integrations/test_shards.py
# covers several. The processes that the end-to-end and fault tests start run with the default (project.settings).
DELIVERY_SHARDS = 1
