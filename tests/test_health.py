"""/health and /ready: liveness without I/O, readiness from concurrent, bounded checks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from django.conf import settings
from django.db import OperationalError
from django.test import AsyncClient, Client
from django.urls import reverse

from modalkit_django.health import probes as health
from modalkit_django.webhooks import generate_secret

from .flow import with_modalkit

pytestmark = pytest.mark.django_db

CLOSED_REDIS = "redis://127.0.0.1:1/0"


def ready() -> tuple[int, dict[str, Any]]:
    response = Client().get("/ready")
    assert response["Content-Type"] == "application/json"
    return response.status_code, response.json()


def test_the_urls_a_host_includes() -> None:
    assert reverse("modalkit_health:live") == "/health"
    assert reverse("modalkit_health:ready") == "/ready"


def test_health_answers_without_checking_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(**kwargs: Any) -> health.Report:
        raise AssertionError("/health must not run the checks")

    monkeypatch.setattr(health, "acheck", broken)
    response = Client().get("/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert "no-cache" in response["Cache-Control"]
    assert Client().post("/health").status_code == 405


def test_ready_with_everything_up() -> None:
    status, body = ready()
    assert status == 200
    assert body["status"] == "ok"
    checks = body["checks"]
    assert set(checks) == {"database", "broker", "queue.memory", "inference"}
    assert checks["database"]["status"] == "ok"
    assert (checks["broker"]["status"], checks["broker"]["detail"]) == ("ok", "in-process")
    assert checks["queue.memory"]["status"] == "ok"
    # The demo runs its model in the process: there is no Modal to look up.
    assert checks["inference"]["status"] == "skipped"
    assert all(check["error"] is None and check["duration_ms"] >= 0 for check in checks.values())


def test_ready_through_the_asgi_handler(run_async: Any) -> None:
    response = run_async(AsyncClient().get, "/ready")
    assert response.status_code == 200
    assert response.json()["checks"]["database"]["status"] == "ok"


def test_a_broker_that_does_not_answer_makes_the_process_unready() -> None:
    with with_modalkit(BROKER={"URL": CLOSED_REDIS}):
        status, body = ready()
    assert status == 503
    assert body["status"] == "error"
    broker = body["checks"]["broker"]
    assert broker["status"] == "error"
    assert "ConnectionError" in broker["error"]
    assert body["checks"]["database"]["status"] == "ok"  # the others still report


def test_the_redis_broker_is_pinged() -> None:
    with with_modalkit(BROKER={"URL": settings.REDIS_URL}):
        status, body = ready()
    assert status == 200
    assert (body["checks"]["broker"]["status"], body["checks"]["broker"]["detail"]) == ("ok", "redis")


def test_errors_never_show_credentials() -> None:
    with with_modalkit(BROKER={"URL": "amqp://ops:s3cret-pw@mq.internal:5672/?token=t0ken"}):
        status, body = ready()
    assert status == 503
    error = body["checks"]["broker"]["error"]
    assert "not a Redis URL" in error
    assert "s3cret-pw" not in error and "t0ken" not in error
    assert "ops:***@mq.internal" in error


def test_a_broker_behind_sentinel_is_reached_through_its_sentinels() -> None:
    with with_modalkit(BROKER={"URL": "redis+sentinel://:s3cret-pw@127.0.0.1:1/main"}):
        report = health.check(timeout=10)  # redis-py asks the sentinels a few times
    [broker] = [check for check in report.checks if check.name == "broker"]
    assert broker.status == "error"
    assert broker.error is not None and broker.error.startswith("MasterNotFoundError: No master found for 'main'")
    assert "s3cret-pw" not in broker.error


def test_invalid_settings_are_reported_not_raised() -> None:
    with with_modalkit(QUEUES={"bad": {"BACKEND": 42}}):
        status, body = ready()
    assert status == 503
    assert body["checks"]["queues"]["error"].startswith("ModalkitImproperlyConfigured: settings.MODALKIT is invalid")
    assert body["checks"]["broker"]["status"] == "error"


def test_a_database_that_fails_makes_the_process_unready(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise OperationalError("connection to server at 127.0.0.1 port 5432 failed")

    monkeypatch.setattr(health, "_select_one", refuse)
    status, body = ready()
    assert status == 503
    assert body["checks"]["database"]["status"] == "error"
    assert body["checks"]["database"]["error"].startswith("OperationalError: connection to server")


def test_checks_run_concurrently_and_each_is_bounded(monkeypatch: pytest.MonkeyPatch, run_async: Any) -> None:
    async def slow(timeout: float) -> health.Finding:
        await asyncio.sleep(0.6)
        return "ok", ""

    async def hung(timeout: float) -> health.Finding:
        await asyncio.sleep(60)
        return "ok", ""

    monkeypatch.setattr(health, "_database", slow)
    monkeypatch.setattr(health, "_broker", slow)
    monkeypatch.setattr(health, "_inference", hung)
    started = time.monotonic()
    report = run_async(health.acheck, timeout=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 1.9, "the checks ran one after another"
    checks = {check.name: check for check in report.checks}
    assert checks["database"].status == checks["broker"].status == "ok"
    assert checks["database"].duration_ms >= 600
    assert (checks["inference"].status, checks["inference"].error) == ("error", "no answer within 1 s")
    assert not report.ok and report.failed == ["inference"]


def test_queue_backends_are_checked_where_it_costs_no_send() -> None:
    queues = {
        **settings.MODALKIT["QUEUES"],
        "results": {"BACKEND": "modalkit_django.queues.redis.RedisBackend", "OPTIONS": {"url": settings.REDIS_URL}},
        "gone": {"BACKEND": "modalkit_django.queues.redis.RedisBackend", "OPTIONS": {"url": CLOSED_REDIS}},
        "hooks": {"BACKEND": "modalkit_django.queues.webhook.WebhookBackend", "OPTIONS": {"secret": generate_secret()}},
    }
    with with_modalkit(QUEUES=queues):
        status, body = ready()
    checks = body["checks"]
    assert status == 503
    assert checks["queue.results"]["status"] == "ok"
    assert checks["queue.gone"]["status"] == "error"
    assert checks["queue.hooks"]["status"] == "skipped"
    assert checks["queue.hooks"]["detail"].startswith("not checked: WebhookBackend")


def test_a_misconfigured_queue_backend_is_an_error() -> None:
    queues = {**settings.MODALKIT["QUEUES"], "bad": {"BACKEND": "modalkit_django.queues.nowhere.Backend"}}
    with with_modalkit(QUEUES=queues):
        status, body = ready()
    assert status == 503
    assert "cannot import" in body["checks"]["queue.bad"]["error"]


def test_the_modal_class_is_looked_up(modal_fake: Any) -> None:
    modal = {"BACKEND": "modalkit_django.clients.modal.ModalBackend", "OPTIONS": {"class_name": "SentimentService"}}
    with with_modalkit(INFERENCE=modal):
        report = health.check(timeout=10)
    [inference] = [check for check in report.checks if check.name == "inference"]
    assert (inference.status, inference.detail) == ("ok", "modalkit-sentiment-dev/SentimentService is deployed")

    missing = {**modal, "OPTIONS": {"class_name": "NoSuchService"}}
    with with_modalkit(INFERENCE=missing):
        report = health.check(timeout=10)
    [inference] = [check for check in report.checks if check.name == "inference"]
    assert inference.status == "error"
    assert "NotFoundError" in (inference.error or "")
