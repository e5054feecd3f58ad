"""Settings for the modalkit-django demo project.

Out of the box everything is embedded (SQLite, tasks in the web process, the model
run in-process), so ``make run`` needs no services. Production-like setups switch
parts with environment variables:

- ``DATABASE_URL``   e.g. postgres://user@host:5432/db   (default: SQLite in the repo)
- ``BROKER_URL``     e.g. redis://127.0.0.1:6379/0        (default: the in-process broker)
- ``INFERENCE``      ``local`` (default: the model runs in this process) or ``modal``
                     (the deployed ``project/modal_app.py``; needs Modal credentials)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-demo-only-set-DJANGO_SECRET_KEY")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = [host for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if host]

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
        from psycopg_pool import ConnectionPool

        # A bounded pool per process, whatever the concurrency: under ASGI each request
        # may run its queries on a new thread, and persistent per-thread connections
        # (CONN_MAX_AGE) reached Postgres's max_connections at 32 clients. A connection
        # goes back to the pool when the request (or the worker's step) ends.
        settings["CONN_MAX_AGE"] = 0
        settings["OPTIONS"] = {
            "pool": {
                "min_size": 1,
                "max_size": int(os.environ.get("DATABASE_POOL_SIZE", "8")),
                "timeout": float(os.environ.get("DATABASE_POOL_TIMEOUT", "10")),
                # Connections the server closed (a restart) are replaced, not handed out.
                "check": ConnectionPool.check_connection,
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

MODALKIT = {
    "CONFIG": BASE_DIR / "modalkit.yaml",
    "INFERENCE": INFERENCE_BACKENDS[INFERENCE],
    "PIPELINE": "project.sentiment.SentimentPipeline",
    "DEFAULT_MODEL": "sentiment",
    "BROKER": {"URL": os.environ.get("BROKER_URL") or None},
    # The in-process broker loses its messages when the server restarts (runserver
    # reloads on every code change): have the sweep resume such jobs within a minute.
    "WORKER": {} if os.environ.get("BROKER_URL") else {"REQUEUE_AFTER_SECONDS": 30, "LEASE_SECONDS": 60},
    "QUEUES": {
        "memory": {"BACKEND": "modalkit_django.queues.memory.MemoryBackend"},
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "modalkit_django": {"handlers": ["console"], "level": os.environ.get("MODALKIT_LOG_LEVEL", "INFO")},
    },
}
