"""Settings for benchmarks: the demo project on PostgreSQL and the Redis stream broker."""

import os

import dj_database_url

# The demo refuses to start without a key when DEBUG is off; a benchmark signs nothing.
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-secret-" + "k" * 40)

from project.settings import *  # noqa: F403
from project.settings import MODALKIT

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/modalkit_bench"),
        conn_max_age=600,
        conn_health_checks=True,
    )
}
DEBUG = False
MODALKIT = {
    **MODALKIT,
    "BROKER": {"URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), "QUEUE_NAME": os.environ["BENCH_QUEUE"]},
    # INFERENCE=local|modal selects the backend, as in the demo project.
    # Results go to a Redis list, as in the performance budget's reference job.
    "QUEUES": {
        **MODALKIT["QUEUES"],
        "redis": {
            "BACKEND": "modalkit_django.queues.redis.RedisBackend",
            "OPTIONS": {
                "url": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                "key_prefix": os.environ.get("BENCH_KEY_PREFIX", "bench:"),
            },
        },
    },
    "QUEUE_ROUTES": [("*", "redis")],
    # BENCH_SWEEP=1: the shipped sweep timers, to measure a drain with the sweep running.
    "WORKER": {
        **({} if os.environ.get("BENCH_SWEEP") else {"SWEEP_INTERVAL_SECONDS": 3600}),
        "BATCHES_IN_FLIGHT": int(os.environ.get("BENCH_BATCHES_IN_FLIGHT", "2")),
        "BATCH_SIZE": int(os.environ.get("BENCH_BATCH_SIZE", "100")),
    },
}
LOGGING = {"version": 1, "disable_existing_loggers": False}

# BENCH_TRACE=DIR: each worker process writes its database steps' times there (bench/trace.py).
if os.environ.get("BENCH_TRACE"):
    from bench import trace

    trace.install(os.environ["BENCH_TRACE"])
