"""Settings for the modalkit-django demo project.

Out of the box everything is embedded (SQLite, tasks in the web process, the model
run in-process), so ``make run`` needs no services. Production-like setups switch
parts with environment variables:

- ``DATABASE_URL``   e.g. postgres://user@host:5432/db   (default: SQLite in the repo)
- ``BROKER_URL``     e.g. redis://127.0.0.1:6379/0        (default: the in-process broker);
                     results then go to Redis lists there, ``modalkit:results:<queue>``
- ``INFERENCE``      ``local`` (default: the model runs in this process) or ``modal``
                     (the deployed ``project/modal_app.py``; needs Modal credentials)

The settings fail closed: ``DEBUG`` is off unless ``DJANGO_DEBUG=1`` (``make run`` sets
it), and with ``DEBUG`` off the project refuses to start without ``DJANGO_SECRET_KEY``.
Serving over HTTPS, switch on the production security settings (each flag is ``1`` or
``0``; the defaults suit ``make run`` on plain http):

- ``DJANGO_ALLOWED_HOSTS``                  e.g. jobs.example.com   (default: 127.0.0.1,localhost)
- ``DJANGO_CSRF_TRUSTED_ORIGINS``           e.g. https://jobs.example.com   (default: none)
- ``DJANGO_SECURE_SSL_REDIRECT``            redirect http to https
- ``DJANGO_SECURE_HSTS_SECONDS``            e.g. 31536000   (default: 0, no HSTS header)
- ``DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS`` HSTS for every subdomain too
- ``DJANGO_SECURE_HSTS_PRELOAD``            allow submitting the domain to browsers' preload lists
- ``DJANGO_SECURE_COOKIES``                 session and CSRF cookies over https only
- ``DJANGO_SECURE_PROXY_SSL_HEADER``        behind a TLS-terminating proxy that sets
                                            ``X-Forwarded-Proto: https`` (and strips it from clients)

``python manage.py check --deploy`` reports what is still missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def flag(name: str) -> bool:
    """The environment variable ``name`` as a switch: ``1`` is on; unset, empty or ``0`` is off.

    Anything else is refused rather than read as off, so ``DJANGO_SECURE_COOKIES=true``
    cannot leave cookies insecure unnoticed.
    """
    value = os.environ.get(name, "")
    if value not in {"", "0", "1"}:
        raise ImproperlyConfigured(f"{name} must be 1 (on) or 0 (off), not {value!r}")
    return value == "1"


def listing(name: str, default: str = "") -> list[str]:
    """The environment variable ``name`` as a comma-separated list."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = flag("DJANGO_DEBUG")

# Only for DEBUG: a key anyone can read in this file signs nothing worth protecting.
INSECURE_DEMO_SECRET_KEY = "django-insecure-demo-only-set-DJANGO_SECRET_KEY"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if DEBUG and not SECRET_KEY:
    SECRET_KEY = INSECURE_DEMO_SECRET_KEY
if not DEBUG and SECRET_KEY in {"", INSECURE_DEMO_SECRET_KEY}:
    raise ImproperlyConfigured(
        "DEBUG is off (DJANGO_DEBUG is not 1), so DJANGO_SECRET_KEY must be set to a secret key of your own: "
        "export DJANGO_SECRET_KEY=\"$(python -c 'from django.core.management.utils import "
        "get_random_secret_key as k; print(k())')\" (keep it secret and the same across restarts), "
        "or run `make run` (DJANGO_DEBUG=1) to try the demo locally."
    )

ALLOWED_HOSTS = listing("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")
# Full origins with their scheme, e.g. https://jobs.example.com, for POSTs from those sites.
CSRF_TRUSTED_ORIGINS = listing("DJANGO_CSRF_TRUSTED_ORIGINS")

# Production security: every switch is off by default so `make run` works over plain http.
SECURE_SSL_REDIRECT = flag("DJANGO_SECURE_SSL_REDIRECT")
# Load balancers probe over plain HTTP inside the network.
SECURE_REDIRECT_EXEMPT = [r"^(health|ready)$"]
try:
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS") or "0")
except ValueError as exc:
    raise ImproperlyConfigured(
        f"DJANGO_SECURE_HSTS_SECONDS must be a number of seconds, not {os.environ['DJANGO_SECURE_HSTS_SECONDS']!r}"
    ) from exc
SECURE_HSTS_INCLUDE_SUBDOMAINS = flag("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS")
SECURE_HSTS_PRELOAD = flag("DJANGO_SECURE_HSTS_PRELOAD")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = flag("DJANGO_SECURE_COOKIES")
# Trust X-Forwarded-Proto only behind a proxy that sets it and strips clients' own: otherwise
# any client could claim https.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if flag("DJANGO_SECURE_PROXY_SSL_HEADER") else None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ninja",
    "modalkit_django",
    "project",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (the admin's, the API docs'), collected by `manage.py collectstatic`
    # (`make serve` runs it) and served by the web process itself, under any server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database(url: str) -> dict[str, Any]:
    """The database at ``url``, as the demo (and its tests) connect to it."""
    settings: dict[str, Any] = dict(dj_database_url.parse(url))
    if settings["ENGINE"] == "django.db.backends.postgresql":
        # A bounded pool per process, whatever the concurrency: under ASGI each request
        # may run its queries on a new thread, and persistent per-thread connections
        # (CONN_MAX_AGE) reached Postgres's max_connections at 32 clients. A connection
        # goes back to the pool when the request (or the worker's step) ends.
        settings["CONN_MAX_AGE"] = 0
        # With a pool, this has Django give it psycopg's check: connections the server
        # closed (a restart) are replaced, not handed out. (Passing "check" among the pool
        # options instead works on Django 6 only: 5.2 passes its own and fails.)
        settings["CONN_HEALTH_CHECKS"] = True
        settings["OPTIONS"] = {
            "pool": {
                "min_size": 1,
                "max_size": int(os.environ.get("DATABASE_POOL_SIZE", "8")),
                "timeout": float(os.environ.get("DATABASE_POOL_TIMEOUT", "10")),
            }
        }
    elif settings["ENGINE"] == "django.db.backends.sqlite3":
        # The embedded worker writes from its own thread: WAL and IMMEDIATE avoid "database is locked".
        settings["CONN_MAX_AGE"] = 600
        settings["OPTIONS"] = {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    return settings


DATABASES = {"default": database(os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"))}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

INFERENCE_BACKENDS = {
    "local": {"BACKEND": "modalkit_django.clients.local.LocalBackend"},
    "modal": {
        "BACKEND": "modalkit_django.clients.modal.ModalBackend",
        "OPTIONS": {"class_name": "SentimentService"},
    },
}
INFERENCE = os.environ.get("INFERENCE", "local")
if INFERENCE not in INFERENCE_BACKENDS:
    raise ImproperlyConfigured(f"INFERENCE must be one of {', '.join(INFERENCE_BACKENDS)}, not {INFERENCE!r}")

BROKER_URL = os.environ.get("BROKER_URL") or None
QUEUES: dict[str, Any] = {"memory": {"BACKEND": "modalkit_django.queues.memory.MemoryBackend"}}
if BROKER_URL:
    # Workers of their own send the results: to Redis lists any process can read
    # (modalkit:results:<queue name>), not to a worker's memory (check E017 refuses that).
    QUEUES["redis"] = {"BACKEND": "modalkit_django.queues.redis.RedisBackend", "OPTIONS": {"url": BROKER_URL}}

MODALKIT = {
    "CONFIG": BASE_DIR / "modalkit.yaml",
    "INFERENCE": INFERENCE_BACKENDS[INFERENCE],
    "PIPELINE": "project.sentiment.SentimentPipeline",
    "DEFAULT_MODEL": "sentiment",
    "BROKER": {"URL": BROKER_URL},
    # The in-process broker's worker runs in this process: a job it held when the server
    # restarted (runserver reloads on every code change) is reclaimed after its lease.
    "WORKER": {} if BROKER_URL else {"LEASE_SECONDS": 60},
    "QUEUES": QUEUES,
    "QUEUE_ROUTES": [("*", "redis")] if BROKER_URL else [],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        # Not propagated: a TaskIQ worker puts a handler of its own on the root logger, which
        # would print every line twice.
        "modalkit_django": {
            "handlers": ["console"],
            "level": os.environ.get("MODALKIT_LOG_LEVEL", "INFO"),
            "propagate": False,
        },
    },
}
