"""``include("modalkit_django.urls")``: the API, /health and /ready in one line, under
``ATOMIC_REQUESTS`` or not, and the broker started by the first request a server serves."""

from __future__ import annotations

import asyncio
import threading
import types
from collections.abc import Iterator

import httpx
import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_started
from django.db import connections
from django.test import Client, override_settings
from django.urls import include, path, reverse

import modalkit_django
from modalkit_django import apps, broker
from modalkit_django.asgi import ApiHandler, get_asgi_application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("recording_waker")]


def test_one_include_mounts_the_api_its_docs_and_the_probes() -> None:
    job_id = "3f0c6a54-1d8e-4a5e-9a51-1c2b3d4e5f60"
    assert reverse("modalkit:get_job", kwargs={"job_id": job_id}) == f"/api/jobs/{job_id}"
    assert reverse("modalkit:openapi-json") == "/api/openapi.json"
    assert reverse("modalkit_health:live") == "/health"
    assert reverse("modalkit_health:ready") == "/ready"
    schema = Client().get("/api/openapi.json").json()
    assert (schema["info"]["title"], schema["info"]["version"]) == ("modalkit-django", modalkit_django.__version__)
    assert Client().get("/api/docs").status_code == 200


def test_the_probes_alone_for_a_host_that_mounts_the_api_itself(atomic_requests: bool) -> None:
    urlconf = types.ModuleType("probes_only")
    urlconf.urlpatterns = [path("ops/", include("modalkit_django.health.urls"))]  # type: ignore[attr-defined]
    with override_settings(ROOT_URLCONF=urlconf):
        assert reverse("modalkit_health:live") == "/ops/health"
        assert Client().get("/ops/health").json() == {"status": "ok"}
        assert Client().get("/api/jobs").status_code == 404


@pytest.fixture(params=[False, True], ids=["autocommit", "ATOMIC_REQUESTS"])
def atomic_requests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every database with ``ATOMIC_REQUESTS`` as the parameter says."""
    for connection in connections.all():
        monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", request.param)
    return bool(request.param)


def test_every_view_answers_under_atomic_requests_or_not(atomic_requests: bool, api: Client) -> None:
    accepted = api.post("/api/async/predict", {"message": {"text": "good"}}, content_type="application/json")
    assert accepted.status_code == 202, accepted.content
    job_id = accepted.json()["job_id"]
    answers = {
        "job": api.get(f"/api/jobs/{job_id}"),
        "jobs": api.get("/api/jobs"),
        "events": api.get(f"/api/jobs/{job_id}/events"),
        "predict": api.post("/api/predict", {"message": {"text": "good"}}, content_type="application/json"),
        "schema": api.get("/api/openapi.json"),
        "health": api.get("/health"),
    }
    assert {name: response.status_code for name, response in answers.items()} == dict.fromkeys(answers, 200)
    # Whatever the dependencies say, /ready answers JSON of its own, not Django's error page.
    assert api.get("/ready")["Content-Type"] == "application/json"


def test_the_lean_path_answers_under_atomic_requests_or_not(atomic_requests: bool, api_key: str) -> None:
    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=get_asgi_application())
        headers = {"Authorization": f"Bearer {api_key}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=headers) as client:
            accepted = await client.post("/api/async/predict", json={"message": {"text": "good"}})
            return [accepted, await client.get(f"/api/jobs/{accepted.json()['job_id']}"), await client.get("/health")]

    assert [response.status_code for response in asyncio.run(calls())] == [202, 200, 200]


# --- The broker starts with the first request a server serves ------------------------------


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """broker.start() calls, recorded, with the app's receiver connected."""
    started: list[str] = []
    done = threading.Event()

    def start() -> None:
        started.append(threading.current_thread().name)
        done.set()

    monkeypatch.setattr(broker, "start", start)
    # Connected as the app connects it (the suite's conftest disconnects it).
    request_started.connect(apps.start_broker_on_first_request, dispatch_uid=apps._START_BROKER)
    yield started
    request_started.disconnect(dispatch_uid=apps._START_BROKER)


@pytest.mark.parametrize("server", [WSGIHandler, ASGIHandler, ApiHandler])
def test_the_first_request_a_server_serves_starts_the_broker_once(server: type, starts: list[str]) -> None:
    Client().get("/health")  # Django's test client is no server: nothing starts
    assert starts == []
    for _ in range(3):
        request_started.send(sender=server, environ={})
    deadline = threading.Event()
    for _ in range(100):
        if starts:
            break
        deadline.wait(0.05)
    assert starts == ["modalkit-broker-start"]  # once, on a thread of its own


def test_a_broker_that_cannot_start_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse() -> None:
        raise modalkit_django.ModalkitImproperlyConfigured("MODALKIT['BROKER']['URL'] must be a redis:// URL")

    monkeypatch.setattr(broker, "start", refuse)
    apps._start_broker()
    assert "The broker cannot start: MODALKIT['BROKER']['URL'] must be a redis:// URL" in caplog.text
