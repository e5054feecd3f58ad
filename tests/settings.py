"""Test settings: the demo project on PostgreSQL, with the in-process broker.

Tests that start a real worker switch the broker to Redis with ``override_settings``;
the worker subprocess gets the same through ``MODALKIT_TEST_BROKER_URL``.
"""

import datetime as dt
import json
import os

from django.utils import timezone

# The demo refuses to start without a key when DEBUG is off. In the environment rather
# than SECRET_KEY, so the workers, servers and `manage.py` runs the tests start inherit it.
os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-not-secret-" + "k" * 40)

from project.settings import *  # noqa: F403
from project.settings import MODALKIT, database

DATABASES = {"default": database(os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/modalkit"))}
# The embedded default's database: the ORM paths of the state machine run on it
# (tests/test_models_orm.py), PostgreSQL's own statements on "default".
DATABASES["embedded"] = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
if os.environ.get("MODALKIT_TEST_PGBOUNCER") == "1":
    # The database is behind PgBouncer in transaction mode (tests/pgbouncer.py, make
    # pgbouncer): the settings docs/how-to/pgbouncer.md gives for it. Django's default
    # already prepares no statements; said here as the page says it.
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = None
if "MODALKIT_TEST_DATABASE_NAME" in os.environ:
    # A worker subprocess must use the test database the test run created.
    DATABASES["default"]["NAME"] = os.environ["MODALKIT_TEST_DATABASE_NAME"]

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# The other brokers' shared servers (scripts/ensure-services starts them).
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")

MODALKIT = {
    **MODALKIT,
    "BROKER": {
        "URL": os.environ.get("MODALKIT_TEST_BROKER_URL") or None,
        "QUEUE_NAME": os.environ.get("MODALKIT_TEST_BROKER_QUEUE", "modalkit-test"),
    },
    "PIPELINE": os.environ.get("MODALKIT_TEST_PIPELINE", MODALKIT["PIPELINE"]),
    # The test process's embedded worker must not sweep under the tests' feet. Worker
    # subprocesses run with the shipped timers, or those a test gives them (JSON).
    # Nor write a heartbeat row that tests counting workers would see.
    "WORKER": json.loads(
        os.environ.get("MODALKIT_TEST_WORKER", '{"SWEEP_INTERVAL_SECONDS": 3600, "RECORD_HEARTBEATS": false}')
    ),
    "DELIVERY": json.loads(os.environ.get("MODALKIT_TEST_DELIVERY", "{}")),
    "METRICS": json.loads(os.environ.get("MODALKIT_TEST_METRICS", "{}")),
    # Queue tests hand a worker subprocess the backends they configure in-process
    # (with override_settings), as JSON: aliases pointing at their loopback peers.
    "QUEUES": {**MODALKIT["QUEUES"], **json.loads(os.environ.get("MODALKIT_TEST_QUEUES", "{}"))},
    "QUEUE_ROUTES": json.loads(os.environ.get("MODALKIT_TEST_QUEUE_ROUTES", "[]")),
    "TASK_MODULES": json.loads(os.environ.get("MODALKIT_TEST_TASK_MODULES", "[]")),
    # Looked up on every request, so a test that revokes a key sees it at once; the cache
    # has tests of its own.
    "API": {"KEY_CACHE_SECONDS": 0},
}

if skew := float(os.environ.get("MODALKIT_TEST_CLOCK_SKEW_SECONDS", "0")):
    # A host whose clock is off (the scale suite's clock test): every reading of
    # ``timezone.now()`` in this process is ``skew`` seconds ahead of the others'.
    _real_now = timezone.now
    timezone.now = lambda: _real_now() + dt.timedelta(seconds=skew)

# Worker subprocesses send to the memory backend, which the tests read back from the
# deliveries' rows: allowed here on purpose (check E017 refuses it everywhere else).
SILENCED_SYSTEM_CHECKS = ["modalkit_django.E017"]

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Static files straight from the apps' folders, with no collectstatic before each run
# (WhiteNoise's finders); the host-project test serves collected ones.
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True
DEBUG = False
# The handler on the root logger: pytest's caplog sees every record, and a worker
# subprocess prints each line once (TaskIQ adds a root handler only when there is none).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"modalkit_django": {"level": "WARNING"}},
}
