"""/health and /ready: liveness without I/O, readiness from concurrent, bounded checks."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import pytest
from django.conf import settings
from django.db import OperationalError
from django.test import AsyncClient, Client, override_settings
from django.urls import reverse

from modalkit_django.health import probes as health
from modalkit_django.health import views as health_views
from modalkit_django.webhooks import generate_secret

from .conftest import wait_until
from .flow import with_modalkit
from .stack import Stack

pytestmark = pytest.mark.django_db

CLOSED_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def _nothing_reported_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a fresh process would: nothing logged about readiness yet."""
    monkeypatch.setattr(health_views, "_last_problems", ())


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
    assert set(checks) == {"database", "migrations", "configuration", "broker", "queue.memory", "inference"}
    # What the process cannot serve without; the others only degrade the service.
    assert {name for name, check in checks.items() if check["required"]} == {"database", "migrations", "configuration"}
    assert checks["database"]["status"] == "ok"
    assert (checks["migrations"]["status"], checks["migrations"]["detail"]) == ("ok", "all applied")
    assert (checks["configuration"]["status"], checks["configuration"]["detail"]) == ("ok", "")
    assert (checks["broker"]["status"], checks["broker"]["detail"]) == ("ok", "in-process")
    assert checks["queue.memory"]["status"] == "ok"
    # The demo runs its model in the process: there is no Modal to look up.
    assert checks["inference"]["status"] == "skipped"
    assert all(check["error"] is None and check["duration_ms"] >= 0 for check in checks.values())


def test_ready_through_the_asgi_handler(run_async: Any) -> None:
    response = run_async(AsyncClient().get, "/ready")
    assert response.status_code == 200
    assert response.json()["checks"]["database"]["status"] == "ok"


def test_a_broker_that_does_not_answer_degrades_the_process_but_leaves_it_serving() -> None:
    # Submits are still accepted then (the jobs wait in the database): an orchestrator
    # must not take every web process out of rotation during a Redis blip.
    with with_modalkit(BROKER={"URL": CLOSED_REDIS}):
        status, body = ready()
        strict = Client().get("/ready?strict=1")
    assert status == 200
    assert body["status"] == "degraded"
    broker = body["checks"]["broker"]
    assert (broker["status"], broker["required"]) == ("error", False)
    assert "ConnectionError" in broker["error"]
    assert body["checks"]["database"]["status"] == "ok"  # the others still report
    # The strict view, for alerts: any failed check is a 503.
    assert strict.status_code == 503
    assert (strict.json()["status"], strict.json()["checks"]["broker"]["status"]) == ("degraded", "error")


def test_the_redis_broker_is_pinged() -> None:
    with with_modalkit(BROKER={"URL": settings.REDIS_URL}):
        status, body = ready()
    assert status == 200
    assert (body["checks"]["broker"]["status"], body["checks"]["broker"]["detail"]) == ("ok", "redis")


@pytest.mark.parametrize(
    ("url", "name"), [(settings.RABBITMQ_URL, "rabbitmq"), (settings.NATS_URL, "nats")], ids=["rabbitmq", "nats"]
)
def test_the_broker_the_url_chooses_is_reached(url: str, name: str) -> None:
    with with_modalkit(BROKER={"URL": url}):
        status, body = ready()
    assert status == 200
    assert (body["checks"]["broker"]["status"], body["checks"]["broker"]["detail"]) == ("ok", name)


@pytest.mark.parametrize("url", ["amqp://ops:s3cret-pw@127.0.0.1:1/", "nats://ops:s3cret-pw@127.0.0.1:1"])
def test_a_rabbitmq_or_nats_broker_away_degrades_the_process(url: str) -> None:
    with with_modalkit(BROKER={"URL": url}):
        status, body = ready()
    assert (status, body["status"]) == (200, "degraded")
    broker = body["checks"]["broker"]
    assert (broker["status"], broker["required"]) == ("error", False)
    assert "s3cret-pw" not in broker["error"]


def test_errors_never_show_credentials(caplog: pytest.LogCaptureFixture) -> None:
    with with_modalkit(BROKER={"URL": "kafka://ops:s3cret-pw@mq.internal:9092/?token=t0ken"}):
        status, body = ready()
    assert status == 503  # no broker's URL: a configuration error (E007), not only a broker away
    for name in ("broker", "configuration"):
        error = body["checks"][name]["error"]
        assert "s3cret-pw" not in error and "t0ken" not in error
        assert "ops:***@mq.internal" in error
    assert "not a redis://, rediss://" in body["checks"]["broker"]["error"]
    assert "modalkit_django.E007" in body["checks"]["configuration"]["error"]
    assert "s3cret-pw" not in caplog.text and "ops:***@mq.internal" in caplog.text


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
    assert body["checks"]["configuration"]["error"].startswith("modalkit_django.E001: settings.MODALKIT is invalid")
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
    assert report.ready and report.status == "degraded"  # Modal away: submits are still accepted


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
    assert (status, body["status"]) == (200, "degraded")  # results wait in the database, retried
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
    assert body["checks"]["configuration"]["error"].startswith("modalkit_django.E005: MODALKIT['QUEUES']['bad']")


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


# --- What the process cannot serve without ------------------------------------------------


@pytest.mark.parametrize(
    ("mistake", "check_id"),
    [({"PIPELINE": "project.sentimnt.SentimentPipeline"}, "E003"), ({"DEFAULT_MODEL": "sentimnet"}, "E004")],
)
def test_a_configuration_error_makes_the_process_unready_naming_the_check(
    mistake: dict[str, Any], check_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    with with_modalkit(**mistake):
        status, body = ready()
        again, _ = ready()
    assert (status, again, body["status"]) == (503, 503, "error")
    configuration = body["checks"]["configuration"]
    assert configuration["required"] is True
    assert configuration["error"].startswith(f"modalkit_django.{check_id}: ")
    # The log says why, once: not at every probe.
    [line] = [record.getMessage() for record in caplog.records if record.name == "modalkit_django.health.views"]
    assert line.startswith(f"Not ready, /ready answers 503: configuration: modalkit_django.{check_id}: ")


def test_the_configuration_is_checked_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = []
    real = health.system_checks.run_checks

    def counted(**kwargs: Any) -> Any:
        runs.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(health.system_checks, "run_checks", counted)
    health.forget()
    for _ in range(3):
        assert ready()[0] == 200
    assert runs == [{"tags": ["modalkit"]}]  # this app's checks: Django's may query databases


def test_a_silenced_check_does_not_count(redis_broker: dict[str, str]) -> None:
    # The tests send to the memory backend from workers on purpose: E017 is silenced.
    assert "modalkit_django.E017" in settings.SILENCED_SYSTEM_CHECKS
    status, body = ready()
    assert (status, body["checks"]["configuration"]["status"]) == (200, "ok")
    with override_settings(SILENCED_SYSTEM_CHECKS=[]):
        status, body = ready()
    assert status == 503
    assert body["checks"]["configuration"]["error"].startswith("modalkit_django.E017: MODALKIT['QUEUES']['memory']")


def test_migrations_not_applied_make_the_process_unready(monkeypatch: pytest.MonkeyPatch) -> None:
    looked: list[int] = []
    unapplied = [f"modalkit_django.{n:04}_step" for n in range(1, 6)]

    def plan(connection: Any = None) -> list[str]:
        looked.append(1)
        return list(unapplied)

    monkeypatch.setattr(health, "unapplied_migrations", plan)
    health.forget()
    status, body = ready()
    assert status == 503
    migrations = body["checks"]["migrations"]
    assert (migrations["status"], migrations["required"]) == ("error", True)
    assert migrations["error"] == (
        "5 migrations not applied (modalkit_django.0001_step, modalkit_django.0002_step, modalkit_django.0003_step "
        "and 2 more): run `manage.py migrate`"
    )
    unapplied.clear()  # `migrate` ran
    assert ready()[0] == 200
    # Applied they stay: the process does not look again.
    assert ready()[0] == 200
    assert len(looked) == 2


def test_the_log_says_when_readiness_changes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modalkit_django.health")
    ready()
    with with_modalkit(BROKER={"URL": CLOSED_REDIS}):
        ready()
        ready()
    with with_modalkit(PIPELINE="project.nowhere.Pipeline"):
        ready()
    ready()
    lines = [record.getMessage() for record in caplog.records if record.name == "modalkit_django.health.views"]
    assert [line.partition(":")[0] for line in lines] == [
        "Ready but degraded",
        "Not ready, /ready answers 503",
        "Ready",
    ]
    assert lines[0].startswith("Ready but degraded: broker: ConnectionError")
    assert "configuration: modalkit_django.E003" in lines[1]
    assert lines[2] == "Ready: every check passes again"


# --- As served: the web process (`make serve`) on a PostgreSQL and a Redis of its own ------


@pytest.mark.e2e
def test_a_served_process_stays_ready_while_redis_is_stopped(stack: Stack) -> None:
    stack.start_server()
    with stack.client() as client:
        assert client.get("/ready").json()["status"] == "ok"
        stack.redis.kill()
        response = client.get("/ready")
        body = response.json()
        assert (response.status_code, body["status"]) == (200, "degraded")
        assert body["checks"]["broker"]["error"].startswith("ConnectionError: Error 111 connecting to")
        assert client.get("/ready?strict=1").status_code == 503
        # What readiness promises: submits work (the job waits in the database for a worker).
        accepted = client.post("/api/async/predict", json={"message": {"text": "a great film"}})
        assert accepted.status_code == 202
        stack.redis.start()
        assert wait_until(lambda: client.get("/ready").json()["status"] == "ok", what="ready again")
    lines = (stack.tmp / "server.log").read_text().splitlines()
    said = [line for line in lines if line.startswith(("Ready", "Not ready"))]
    assert len(said) == 2, lines
    assert said[0].startswith("Ready but degraded: broker: ConnectionError: Error 111 connecting to")
    assert said[1] == "Ready: every check passes again"
    assert not any("Traceback" in line for line in lines)


@pytest.mark.e2e
def test_a_served_process_without_migrations_is_not_ready_and_says_run_migrate(stack: Stack) -> None:
    database = stack.postgres.create_database("not_migrated")
    env = {"TEST_DATABASE_URL": database, "MODALKIT_TEST_DATABASE_NAME": "not_migrated"}
    stack.env.update(env)  # the server, and `manage.py migrate` below
    stack.start_server()
    with stack.client() as client:
        response = client.get("/ready")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "error"
        migrations = body["checks"]["migrations"]
        assert re.fullmatch(
            r"\d+ migrations not applied \(contenttypes\.0001_initial, .+ more\): run `manage\.py migrate`",
            migrations["error"],
        )
        assert body["checks"]["database"]["status"] == "ok"
        assert client.get("/ready").status_code == 503
        # A submit is a 503 too (not a 500), and the log says why.
        submitted = client.post("/api/async/predict", json={"message": {"text": "x"}})
        assert submitted.status_code == 503
        stack.manage("migrate", "--noinput")
        assert client.get("/ready").status_code == 200
    lines = (stack.tmp / "server.log").read_text().splitlines()
    said = [line for line in lines if line.startswith(("Ready", "Not ready", "Answering"))]
    assert len(said) == 3, lines
    assert said[0] == f"Not ready, /ready answers 503: migrations: {migrations['error']}"
    assert said[1].startswith('Answering 503, the database is not migrated (relation "modalkit_django_apikey" does not')
    assert said[1].endswith("): run `manage.py migrate`")
    assert said[2] == "Ready: every check passes again"
    assert not any("Traceback" in line for line in lines)
