"""Settings, all read from the environment (and `.env` when present). `.env.example` documents every variable."""

import base64
import hashlib
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"  # local state: the beat schedule, the SQLite test database, collected static files
VAR_DIR.mkdir(exist_ok=True)

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="").strip()  # blank counts as missing
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"


def _encryption_keys() -> list[str]:
    keys = [key.strip() for key in env.list("FIELD_ENCRYPTION_KEYS", default=[]) if key.strip()]  # blank: missing
    if not keys:
        if not DEBUG:
            raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS must be set when DEBUG is off.")
        # Development only: a stable key derived from SECRET_KEY, so a local database stays readable.
        digest = hashlib.sha256(("field-encryption:" + SECRET_KEY).encode()).digest()
        keys = [base64.urlsafe_b64encode(digest).decode()]
    from cryptography.fernet import Fernet

    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError) as exc:
            raise ImproperlyConfigured(
                f"FIELD_ENCRYPTION_KEYS: key {position} is not a valid Fernet key (32 url-safe base64 bytes)."
            ) from exc
    return keys


FIELD_ENCRYPTION_KEYS = _encryption_keys()

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- HTTPS in production ---------------------------------------------------------------------------------------------
# Behind a TLS-terminating proxy: SECURE_PROXY_SSL_HEADER=HTTP_X_FORWARDED_PROTO,https (only if the proxy sets that
# header and strips the client's), then SESSION_COOKIE_SECURE, CSRF_COOKIE_SECURE, SECURE_SSL_REDIRECT and
# SECURE_HSTS_SECONDS (31536000 once HTTPS works everywhere; HSTS cannot be taken back from browsers that saw it).
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
_proxy_ssl_header = env.list("SECURE_PROXY_SSL_HEADER", default=[])
if _proxy_ssl_header and len(_proxy_ssl_header) != 2:
    raise ImproperlyConfigured("SECURE_PROXY_SSL_HEADER must be a header and a value: HTTP_X_FORWARDED_PROTO,https")
SECURE_PROXY_SSL_HEADER = tuple(_proxy_ssl_header) if _proxy_ssl_header else None

INSTALLED_APPS = [
    "console.apps.ConsoleAdminConfig",  # django.contrib.admin, with the console's site as the default site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "audiences",
    "integrations",
    "api",
    "console",
]

MIDDLEWARE = [
    "api.middleware.RequestBodyLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: it turns a locked-out login into the lockout page
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.context_processors.open_alerts",
            ],
        },
    },
]

WSGI_APPLICATION = "project.wsgi.application"

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file (not in-memory) test database, so that worker processes started by the tests can open it too.
    DATABASES["default"].setdefault("TEST", {})["NAME"] = str(VAR_DIR / "test_db.sqlite3")
    DATABASES["default"].setdefault("OPTIONS", {}).update({"timeout": 30, "transaction_mode": "IMMEDIATE"})
else:
    # Workers run many short drain tasks and the API many short requests: keep each process's connection instead
    # of opening one per task or request, and check it before reuse (a restarted PostgreSQL is reconnected to).
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=300)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# A write transaction (a batch of changes, a deletion, a resync page) gives up waiting for a row lock after this long
# and is tried again (project.transactions); when every try waits that long, the API answers 503. 0: no limit.
DATABASE_LOCK_TIMEOUT_SECONDS = env.float("DATABASE_LOCK_TIMEOUT_SECONDS", default=4.0)

# --- Admin login ---------------------------------------------------------------------------------------------------
# django-axes counts failed admin logins in the database: after ADMIN_LOGIN_FAILURE_LIMIT failures for one username
# (from anywhere) or from one address (for any usernames), that username or address is locked out for
# ADMIN_LOGIN_LOCKOUT_MINUTES, even with the right password. The address is REMOTE_ADDR, or behind
# API_TRUSTED_PROXY_COUNT proxies the one the outermost proxy saw. `manage.py axes_reset` lifts every lockout.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env.int("ADMIN_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("ADMIN_LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # each on its own: a username, or an address
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "console.site.admin_lockout"
AXES_SENSITIVE_PARAMETERS = ["password"]
AXES_VERBOSE = False  # no banner at every start; failed logins and lockouts are still logged
if AXES_FAILURE_LIMIT < 1:
    raise ImproperlyConfigured("ADMIN_LOGIN_FAILURE_LIMIT must be 1 or more.")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Messages (such as a new API key, shown once) stay on the server instead of travelling in a cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise looks there too (empty until collectstatic)
# gunicorn serves the admin's static files itself (WhiteNoise), straight from the apps: no collectstatic step. After
# `manage.py collectstatic`, WHITENOISE_USE_FINDERS=false serves STATIC_ROOT instead.
WHITENOISE_USE_FINDERS = env.bool("WHITENOISE_USE_FINDERS", default=True)

# GET /metrics (Prometheus) asks for `Authorization: Bearer <token>` when a token is set. Without one it is served
# only with DEBUG on or METRICS_PUBLIC=true (it names every connection, audience and stream). Each process computes
# it at most once per METRICS_CACHE_SECONDS, however many scrapers ask.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_PUBLIC = env.bool("METRICS_PUBLIC", default=False)
METRICS_CACHE_SECONDS = env.float("METRICS_CACHE_SECONDS", default=5.0)

# The API refuses larger bodies with 413 before reading them (api.middleware).
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=16 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
API_MAX_CHANGES_PER_REQUEST = 10_000
# A change stamped further ahead of the server's clock is refused (400): it would make every later change of the
# user in that audience stale.
CHANGE_MAX_FUTURE_SECONDS = env.int("CHANGE_MAX_FUTURE_SECONDS", default=300)
if CHANGE_MAX_FUTURE_SECONDS < 0:
    raise ImproperlyConfigured("CHANGE_MAX_FUTURE_SECONDS must be 0 or more.")
# Failed API key authentication is rate limited per client address (api.authentication): after
# API_AUTH_FAILURE_LIMIT failures within API_AUTH_FAILURE_WINDOW_SECONDS, the address gets 429 for that long, even
# with a valid key. 0 turns the limit off. The counters live in the cache (CACHES below), shared by all web processes.
API_AUTH_FAILURE_LIMIT = env.int("API_AUTH_FAILURE_LIMIT", default=10)
API_AUTH_FAILURE_WINDOW_SECONDS = env.int("API_AUTH_FAILURE_WINDOW_SECONDS", default=60)
# The client address is REMOTE_ADDR. Behind N reverse proxies that each append to X-Forwarded-For, set N: the address
# is then the N-th from the right of X-Forwarded-For (the one the outermost proxy saw), never a client-chosen one.
API_TRUSTED_PROXY_COUNT = env.int("API_TRUSTED_PROXY_COUNT", default=0)
AXES_IPWARE_PROXY_COUNT = API_TRUSTED_PROXY_COUNT or None
AXES_IPWARE_META_PRECEDENCE_ORDER = (
    ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"] if API_TRUSTED_PROXY_COUNT else ["REMOTE_ADDR"]
)
if API_AUTH_FAILURE_LIMIT < 0 or API_AUTH_FAILURE_WINDOW_SECONDS < 1 or API_TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured(
        "API_AUTH_FAILURE_LIMIT and API_TRUSTED_PROXY_COUNT must be 0 or more, "
        "API_AUTH_FAILURE_WINDOW_SECONDS 1 or more."
    )

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["api.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.HasScope"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Firehose Audience Forwarder API",
    "DESCRIPTION": "Feed audience membership changes; every change becomes one Amazon Kinesis Data Firehose record "
    "per connected delivery stream.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Delivery ---------------------------------------------------------------------------------------------------
# Consecutive failed requests on one connection before it becomes `faulted` with a `Retry Limit Exceeded` alert.
FIREHOSE_RETRY_LIMIT = env.int("FIREHOSE_RETRY_LIMIT", default=8)
# Exponential backoff with jitter: the n-th retry waits between half and all of min(cap, base * 2**(n-1)) seconds.
FIREHOSE_BACKOFF_BASE_SECONDS = env.float("FIREHOSE_BACKOFF_BASE_SECONDS", default=1.0)
FIREHOSE_BACKOFF_CAP_SECONDS = env.float("FIREHOSE_BACKOFF_CAP_SECONDS", default=300.0)
FIREHOSE_CONNECT_TIMEOUT_SECONDS = env.float("FIREHOSE_CONNECT_TIMEOUT_SECONDS", default=5.0)
FIREHOSE_READ_TIMEOUT_SECONDS = env.float("FIREHOSE_READ_TIMEOUT_SECONDS", default=15.0)
# A connection's backlog is split into this many shards by user (user_id % DELIVERY_SHARDS), each drained by at most
# one worker process at a time: up to this many processes, on any machines, deliver one connection in parallel while
# each user's records keep their order. Set it to about the number of worker processes; change it only while the
# backlogs are empty (a pending delivery keeps the shard it was queued in).
DELIVERY_SHARDS = env.int("DELIVERY_SHARDS", default=4)
if not 1 <= DELIVERY_SHARDS <= 256:
    raise ImproperlyConfigured("DELIVERY_SHARDS must be between 1 and 256.")
# A drain task holds its shard's lease this long; it renews it between batches. A crashed worker's lease
# expires, and the sweep hands the shard to another worker. Must exceed the client timeouts above.
DRAIN_LEASE_SECONDS = env.int("DRAIN_LEASE_SECONDS", default=60)
# A drain task stops after this long and re-queues itself, so that one busy shard cannot hog a worker.
DRAIN_TIME_BUDGET_SECONDS = env.float("DRAIN_TIME_BUDGET_SECONDS", default=10.0)
SWEEP_INTERVAL_SECONDS = env.float("SWEEP_INTERVAL_SECONDS", default=2.0)
# Delivered and skipped deliveries, and delivery attempts, are purged this many days after they settled (hourly,
# in small batches: integrations.retention). Pending and failed deliveries stay until resolved. 0 keeps everything.
DELIVERY_RETENTION_DAYS = env.int("DELIVERY_RETENTION_DAYS", default=14)
if DELIVERY_RETENTION_DAYS < 0:
    raise ImproperlyConfigured("DELIVERY_RETENTION_DAYS must be 0 (keep everything) or more.")
# After Firehose accepted a batch, how long a drain keeps trying to record it through a database outage before it
# gives up (and the batch is sent again later: a duplicate, never a loss).
DELIVERY_RECORD_RETRY_SECONDS = env.float("DELIVERY_RECORD_RETRY_SECONDS", default=60.0)

# --- Celery -------------------------------------------------------------------------------------------------------
# The database is the source of truth: Celery only carries "drain connection N" kicks, and the beat sweep
# re-kicks anything whose kick was lost. So a lost or duplicated task costs latency, never a record.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/0")
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# Acknowledge after the task ran, so a worker killed mid-drain leaves its kick to be redelivered.
CELERY_TASK_ACKS_LATE = True
# With acks_late, a task whose worker process died is re-queued instead of being acknowledged as failed.
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A drain runs for up to DRAIN_TIME_BUDGET_SECONDS: prefetching more kicks would only park them behind it.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# No task is ever scheduled with a countdown or ETA (retries live in `next_attempt_at` in the database), so an
# unacknowledged kick is only redelivered after this timeout, well beyond any drain's time budget.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
# Redis serves lower numbers first (kombu's priority steps 0, 3, 6, 9): kicks wait at 6, and the sweep, which
# recovers everything else and feeds /healthz, goes at 0, ahead of any backlog of kicks.
CELERY_TASK_DEFAULT_PRIORITY = 6
SWEEP_PRIORITY = 0
# A kick published while Redis is down must fail fast: the change is already committed and the sweep recovers it.
CELERY_TASK_PUBLISH_RETRY = False
CELERY_BROKER_CONNECTION_TIMEOUT = 2.0
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "sweep-connections": {
        "task": "integrations.tasks.sweep_connections",
        "schedule": timedelta(seconds=SWEEP_INTERVAL_SECONDS),
        "options": {"expires": SWEEP_INTERVAL_SECONDS * 5, "priority": SWEEP_PRIORITY},
    },
    "purge-deliveries": {
        "task": "integrations.tasks.purge_deliveries",
        "schedule": timedelta(hours=1),
        "options": {"expires": 3600},
    },
}

# --- Cache --------------------------------------------------------------------------------------------------------
# Holds the failed-authentication counters of the API, which every web process must share: by default the broker's
# Redis (keys prefixed "firehose:"), else CACHE_URL (e.g. redis://host:6379/1). Short timeouts: when the cache is down,
# API keys still work, only without the rate limit.
_redis_broker = CELERY_BROKER_URL.startswith(("redis://", "rediss://"))
_cache_url = env.str("CACHE_URL", default="").strip() or (CELERY_BROKER_URL if _redis_broker else "locmemcache://")
CACHES = {"default": env.cache_url_config(_cache_url)}
CACHES["default"].setdefault("KEY_PREFIX", "firehose")
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    CACHES["default"].setdefault("OPTIONS", {}).setdefault("socket_connect_timeout", 0.5)
    CACHES["default"]["OPTIONS"].setdefault("socket_timeout", 0.5)

# "plain" lines for people, or "json": one JSON object per line for log shippers.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured("LOG_FORMAT must be plain or json.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "project.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"botocore": {"level": "WARNING"}, "urllib3": {"level": "WARNING"}},
}
