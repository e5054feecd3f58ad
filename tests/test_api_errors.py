"""Every error the API gives is JSON in its own shape, documented, and tells nothing secret."""

from __future__ import annotations

import asyncio
import json
import logging
import types
import uuid
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.core.signals import got_request_exception
from django.db import OperationalError, connection
from django.test import Client, override_settings
from django.urls import path
from ninja import NinjaAPI, Router
from ninja.errors import HttpError

import modalkit_django
from modalkit_django.api import add_error_handlers, build_router
from modalkit_django.api.errors import MISCONFIGURED, http_errors
from modalkit_django.asgi import get_asgi_application
from modalkit_django.exceptions import DeliveryError, ModalkitImproperlyConfigured
from modalkit_django.jobs import queries
from modalkit_django.models import QueueDelivery, SendResult

from . import flow

pytestmark = pytest.mark.django_db(transaction=True)

BIG = json.dumps({"message": {"text": "x" * 2_000}})


@pytest.fixture(autouse=True)
def waker(recording_waker: Any) -> Any:
    return recording_waker


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1_000)
def test_a_body_over_the_limit_is_a_json_413(api: Client) -> None:
    response = api.post("/api/async/predict", data=BIG, content_type="application/json")
    assert response.status_code == 413
    assert response.json() == {"detail": "The request body is over 1000 bytes."}


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1_000)
def test_the_served_api_refuses_a_large_body_before_reading_it(api_key: str) -> None:
    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=get_asgi_application())
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
            return await client.post("/api/async/predict", content=BIG, headers=headers)

    response = asyncio.run(post())
    assert response.status_code == 413
    assert response.json() == {"detail": "The request body is over 1000 bytes."}


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_error_is_a_json_500_with_an_error_id_that_is_logged(
    api: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, debug: bool
) -> None:
    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(queries, "get_job", broken)
    with override_settings(DEBUG=debug), caplog.at_level(logging.ERROR):
        response = api.get("/api/jobs/00000000-0000-0000-0000-000000000000")

    assert response.status_code == 500
    body = response.json()
    assert set(body) == {"detail", "error_id"}
    assert body["error_id"] in body["detail"]
    assert "secret internals" not in response.content.decode()
    [record] = [record for record in caplog.records if body["error_id"] in record.getMessage()]
    assert record.exc_info is not None and "secret internals" in str(record.exc_info[1])


def test_a_delivery_error_shows_its_class_and_status_only(api: Client, user: Any) -> None:
    job = modalkit_django.submit_job(message={"text": "good"}, success_queue="hooks", owner=user)
    [delivery] = flow.finish([(flow.claim_one(job), flow.OUTPUT)])
    error = DeliveryError("POST https://hooks.example.com/in?token=s3cret answered 503: busy", status_code=503)
    flow.record([SendResult(delivery, error=error)])
    assert "token=s3cret" in QueueDelivery.objects.get().last_error  # kept for operators

    [shown] = api.get(f"/api/jobs/{job.id}").json()["deliveries"]

    assert shown["last_error"] == "DeliveryError (HTTP 503)"


def test_the_schema_documents_every_status_and_enumerates_statuses(api: Client) -> None:
    schema = api.get("/api/openapi.json").json()
    operations = {
        (path, method): operation for path, item in schema["paths"].items() for method, operation in item.items()
    }

    submit = operations[("/api/async/predict", "post")]["responses"]
    assert {"202", "400", "401", "403", "404", "409", "413", "422", "429", "500", "503"} <= set(submit)
    for operation in operations.values():
        assert {"401", "422", "500", "503"} <= set(operation["responses"])
    components = schema["components"]["schemas"]
    assert components["JobStatus"]["enum"] == ["queued", "running", "succeeded", "failed", "canceled", "expired"]
    assert components["DeliveryStatus"]["enum"] == ["pending", "sent", "retrying", "dead"]
    assert components["JobAccepted"]["properties"]["status"] == {"$ref": "#/components/schemas/JobStatus"}


# --- Configuration mistakes and an unmigrated database: a 503, and one line saying why ------


def post_job(api: Client, **params: str) -> Any:
    query = "".join(f"?{name}={value}" for name, value in params.items())
    return api.post(f"/api/async/predict{query}", data={"message": {"text": "x"}}, content_type="application/json")


def lines_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == logger]


def test_a_default_model_typo_is_a_503_that_the_log_explains(api: Client, caplog: pytest.LogCaptureFixture) -> None:
    with override_settings(MODALKIT={**settings.MODALKIT, "DEFAULT_MODEL": "sentimnet"}):
        response = post_job(api)
        named = post_job(api, model_name="sentiment")
    # Not a 404 naming a model the client never sent.
    assert response.status_code == 503
    assert response.json() == {"detail": MISCONFIGURED}
    assert named.status_code == 202  # a request naming its model does not need the default
    [record] = lines_of(caplog, "modalkit_django.api.errors")
    assert record.getMessage() == (
        "Answering 503, the service is misconfigured: MODALKIT['DEFAULT_MODEL'] 'sentimnet' is not in "
        "modalkit.yaml's model_entries (sentiment)"
    )
    assert record.exc_info is None  # one line, no traceback


def test_a_pipeline_that_cannot_be_imported_is_a_503_that_the_log_explains(
    api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    with override_settings(MODALKIT={**settings.MODALKIT, "PIPELINE": "project.sentimnt.SentimentPipeline"}):
        untyped = NinjaAPI(urls_namespace=f"untyped-{uuid.uuid4().hex}")
        add_error_handlers(untyped).add_router("/", build_router())
        urlconf = types.ModuleType("untyped_urls")
        urlconf.urlpatterns = [path("api/", untyped.urls)]  # type: ignore[attr-defined]
        with override_settings(ROOT_URLCONF=urlconf):
            response = post_job(Client(headers={"Authorization": f"Bearer {api_key}"}))
    assert response.status_code == 503
    [record] = lines_of(caplog, "modalkit_django.api.errors")
    assert record.getMessage() == (
        "Answering 503, the service is misconfigured: cannot import MODALKIT['PIPELINE'] "
        "'project.sentimnt.SentimentPipeline': No module named 'project.sentimnt'"
    )


def test_the_log_of_a_503_shows_no_credentials(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(HttpError), http_errors():
        raise ModalkitImproperlyConfigured("cannot reach\nredis://ops:s3cret@cache:6379/0")
    [record] = lines_of(caplog, "modalkit_django.api.errors")
    assert record.getMessage() == (
        "Answering 503, the service is misconfigured: cannot reach redis://ops:***@cache:6379/0"
    )


def test_a_database_not_migrated_is_a_503_that_says_run_migrate(
    api: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def missing_table(**kwargs: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM modalkit_django_not_migrated_yet")

    monkeypatch.setattr(queries, "get_job", missing_table)
    response = api.get("/api/jobs/00000000-0000-0000-0000-000000000000")
    assert (response.status_code, response["Retry-After"]) == (503, "5")
    [record] = lines_of(caplog, "modalkit_django.api.errors")
    assert record.getMessage() == (
        'Answering 503, the database is not migrated (relation "modalkit_django_not_migrated_yet" does not exist): '
        "run `manage.py migrate`"
    )
    assert record.exc_info is None

    # Any other programming error is a bug: a 500, with its traceback.
    def bad_sql(**kwargs: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELEC 1")

    monkeypatch.setattr(queries, "get_job", bad_sql)
    with caplog.at_level(logging.ERROR):
        assert api.get("/api/jobs/00000000-0000-0000-0000-000000000000").status_code == 500


# --- A host's own NinjaAPI that mounts the router (the manual path) -------------------------


class HostError(Exception):
    pass


def host_urlconf(*, catch_all_first: bool) -> types.ModuleType:
    """A host's NinjaAPI with a router of its own and ours; its catch-all handler added
    before or after ``add_error_handlers``."""
    host = NinjaAPI(urls_namespace=f"host-{uuid.uuid4().hex}")
    theirs = Router()

    @theirs.get("/boom")
    def boom(request: Any) -> None:
        raise RuntimeError("the host's own bug")

    @theirs.get("/db")
    def db(request: Any) -> None:
        raise OperationalError("the host's database")

    @theirs.get("/handled")
    def handled(request: Any) -> None:
        raise HostError("handled by the host")

    def catch_all(request: Any, exc: Exception) -> Any:
        return host.create_response(request, {"host": type(exc).__name__}, status=418)

    if catch_all_first:
        host.add_exception_handler(HostError, catch_all)
    add_error_handlers(host)
    add_error_handlers(host)  # idempotent
    if not catch_all_first:
        host.add_exception_handler(HostError, catch_all)
    host.add_router("/mine/", theirs)
    host.add_router("/", build_router())
    urlconf = types.ModuleType("host_urls")
    urlconf.urlpatterns = [path("api/", host.urls)]  # type: ignore[attr-defined]
    return urlconf


@pytest.mark.parametrize("catch_all_first", [True, False])
def test_on_a_hosts_api_our_answers_are_for_our_routes_only(
    api_key: str, monkeypatch: pytest.MonkeyPatch, catch_all_first: bool
) -> None:
    raised: list[Any] = []

    def record(sender: Any, request: Any, **kwargs: Any) -> None:
        raised.append(request.path)

    got_request_exception.connect(record)
    client = Client(headers={"Authorization": f"Bearer {api_key}"}, raise_request_exception=False)
    try:
        with override_settings(ROOT_URLCONF=host_urlconf(catch_all_first=catch_all_first)):
            # The host's routes: Django's own 500 (and its signal), the host's own handler.
            response = client.get("/api/mine/boom")
            assert (response.status_code, response["Content-Type"].startswith("text/html")) == (500, True)
            response = client.get("/api/mine/db")
            assert (response.status_code, response["Content-Type"].startswith("text/html")) == (500, True)
            assert "Retry-After" not in response
            response = client.get("/api/mine/handled")
            assert (response.status_code, response.json()) == (418, {"host": "HostError"})
            assert raised == ["/api/mine/boom", "/api/mine/db"]

            # Ours: our shapes, whatever the host's API does.
            monkeypatch.setattr(queries, "get_job", lambda **kwargs: (_ for _ in ()).throw(OperationalError("away")))
            response = client.get(f"/api/jobs/{uuid.uuid4()}")
            assert (response.status_code, response["Retry-After"]) == (503, "5")
            monkeypatch.setattr(queries, "get_job", lambda **kwargs: (_ for _ in ()).throw(HostError("ours")))
            response = client.get(f"/api/jobs/{uuid.uuid4()}")
            assert response.status_code == 500
            assert set(response.json()) == {"detail", "error_id"}
            assert client.get("/api/jobs/not-a-uuid").status_code == 422
            assert Client().get("/api/jobs").json() == {"detail": "Unauthorized"}
            assert raised == ["/api/mine/boom", "/api/mine/db"]  # ours answered, nothing raised
    finally:
        got_request_exception.disconnect(record)
