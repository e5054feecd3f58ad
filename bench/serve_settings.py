"""Settings both sides of bench/submit.py are served with: the demo project on PostgreSQL
and Redis, its own settings otherwise. ``BENCH_URLCONF`` picks the app."""

import os

# The demo refuses to start without a key when DEBUG is off; a benchmark signs nothing.
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-secret-" + "k" * 40)

from project.settings import *  # noqa: F403
from project.settings import MIDDLEWARE, MODALKIT

ROOT_URLCONF = os.environ.get("BENCH_URLCONF", "project.urls")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
MODALKIT = {
    **MODALKIT,
    "BROKER": {"URL": REDIS_URL, "QUEUE_NAME": os.environ["BENCH_QUEUE"]},
    # Results to Redis lists, as the demo sends them when it has a broker: with one, check
    # E017 refuses the memory backend. No worker runs here, so none is sent.
    "QUEUES": {
        **MODALKIT["QUEUES"],
        "redis": {"BACKEND": "modalkit_django.queues.redis.RedisBackend", "OPTIONS": {"url": REDIS_URL}},
    },
    "QUEUE_ROUTES": [("*", "redis")],
}
LOGGING = {"version": 1, "disable_existing_loggers": False}
# No static files here: the floor keeps the middleware it was first measured with (WhiteNoise's
# is sync, one more thread hop on Django's handler).
MIDDLEWARE = [name for name in MIDDLEWARE if not name.startswith("whitenoise.")]
if os.environ.get("BENCH_NO_MIDDLEWARE"):
    MIDDLEWARE = []
    SILENCED_SYSTEM_CHECKS = ["admin.E408", "admin.E409", "admin.E410"]
