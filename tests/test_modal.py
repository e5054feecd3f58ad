"""Inference on Modal, with the real ``modal`` SDK against the loopback control plane.

The fake runs ``project.modal_app.SentimentService`` (and tests/modal_apps.py) in this
process as the deployment; everything between Django and it is the real SDK over gRPC.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.test import Client, override_settings
from django.utils import timezone

import modalkit_django
from modalkit_django.models import Job

from . import flow
from .conftest import wait_until
from .modal_apps import BrokenService, EchoService

pytestmark = pytest.mark.django_db

SENTIMENT = {
    "BACKEND": "modalkit_django.clients.modal.ModalBackend",
    "OPTIONS": {"class_name": "SentimentService"},
}


def on_modal(**options: Any) -> Any:
    inference = {**SENTIMENT, "OPTIONS": {**SENTIMENT["OPTIONS"], **options}}
    return override_settings(MODALKIT={**settings.MODALKIT, "INFERENCE": inference})


@pytest.fixture
def fake(fresh_modal_fake: Any) -> Iterator[Any]:
    fresh_modal_fake.register_cls("modalkit-echo-dev", "EchoService", EchoService)
    fresh_modal_fake.register_cls("modalkit-echo-dev", "BrokenService", BrokenService)
    with on_modal(timeout=10):
        yield fresh_modal_fake


def predict(api: Client, text: str) -> Any:
    return api.post("/api/predict", data=json.dumps({"message": {"text": text}}), content_type="application/json")


# --- /predict ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_predict_calls_the_deployed_class(api: Client, fake: Any) -> None:
    response = predict(api, "what a great film")
    assert response.status_code == 200, response.content
    assert response.json()["sentiment"] == "positive"
    assert fake.stats.inputs == 1
    assert fake.stats.function_maps == 1


@pytest.mark.django_db(transaction=True)
def test_predict_pipeline_error_is_a_502(api: Client, fake: Any) -> None:
    response = predict(api, "explode")
    assert response.status_code == 502
    assert response.json() == {"detail": "the model cannot read 'explode'"}


@pytest.mark.django_db(transaction=True)
def test_predict_exception_raised_remotely_is_a_502_naming_it(api: Client, fake: Any) -> None:
    with on_modal(app_name="modalkit-echo-dev", class_name="BrokenService"):
        response = predict(api, "anything")
    assert response.status_code == 502
    assert response.json() == {"detail": "'predict_batch lost its model'"}


@pytest.mark.django_db(transaction=True)
def test_predict_on_a_class_that_is_not_deployed_is_a_502(api: Client, fake: Any) -> None:
    with on_modal(class_name="NoSuchService"):
        response = predict(api, "good")
    assert response.status_code == 502
    assert response.json()["detail"].startswith("modalkit-sentiment-dev/NoSuchService is not deployed")


@pytest.mark.django_db(transaction=True)
def test_predict_with_refused_credentials_is_a_502(api: Client, fake: Any) -> None:
    fake.reject_auth = True
    response = predict(api, "good")
    assert response.status_code == 502
    assert response.json()["detail"].startswith("Modal refused the credentials")


@pytest.mark.django_db(transaction=True)
def test_predict_when_modal_is_unavailable_is_a_503(api: Client, fake: Any) -> None:
    fake.unavailable = True
    response = predict(api, "good")
    assert response.status_code == 503
    assert "is unavailable" in response.json()["detail"]


@pytest.mark.django_db(transaction=True)
def test_predict_past_the_deadline_is_a_504(api: Client, fake: Any) -> None:
    fake.delay = 3.0
    with on_modal(timeout=0.5):
        response = predict(api, "good")
    assert response.status_code == 504
    assert response.json() == {"detail": "modalkit-sentiment-dev/SentimentService did not answer within 0.5 s"}
    fake.delay = 0
    assert predict(api, "good").status_code == 200  # the SDK is still usable afterwards


# --- jobs, in this process ---------------------------------------------------------------


def submit(text: str, **kwargs: Any) -> Job:
    return modalkit_django.submit_job(message={"text": text}, failure_queue="errors", **kwargs)


def test_jobs_of_a_batch_are_concurrent_modal_calls(run_async: Any, fake: Any) -> None:
    jobs = [submit(f"good film {n}") for n in range(24)]
    run_async(flow.process_batch, [str(job.id) for job in jobs])
    assert set(Job.objects.values_list("status", flat=True)) == {"succeeded"}
    stats = fake.stats
    assert stats.inputs == 24
    assert stats.calls_per_input == 1.0
    # Sent together, so Modal ran them in batches rather than one by one.
    assert max(stats.batch_sizes) > 1
    assert stats.method_calls < 24


def test_a_job_whose_pipeline_fails_on_modal_fails(run_async: Any, fake: Any) -> None:
    job = submit("explode")
    run_async(flow.process_batch, [str(job.id)])
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error == {"type": "ValueError", "message": "the model cannot read 'explode'"}
    assert job.deliveries.get().route == "failure"


def test_a_job_on_an_undeployed_class_fails_at_once(run_async: Any, fake: Any) -> None:
    job = submit("good")
    with on_modal(class_name="NoSuchService"):
        run_async(flow.process_batch, [str(job.id)])
    job.refresh_from_db()
    assert (job.status, job.attempts, job.error["type"]) == ("failed", 1, "NotFoundError")


def test_a_job_past_the_deadline_fails(run_async: Any, fake: Any) -> None:
    fake.delay = 3.0
    job = submit("good")
    with on_modal(timeout=0.5):
        run_async(flow.process_batch, [str(job.id)])
    job.refresh_from_db()
    assert (job.status, job.error["type"]) == ("failed", "InferenceTimeout")


def test_unavailable_modal_retries_the_job_then_succeeds(run_async: Any, fake: Any) -> None:
    fake.unavailable = True
    job = submit("good")
    run_async(flow.process_batch, [str(job.id)])
    job.refresh_from_db()
    assert (job.status, job.attempts, job.error["type"]) == ("queued", 1, "ServiceError")
    assert job.run_after is not None

    fake.unavailable = False
    Job.objects.filter(id=job.id).update(run_after=None, queued_at=timezone.now())  # its backoff is over
    run_async(flow.process_batch, [str(job.id)])
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("succeeded", 2)


def test_unavailable_modal_fails_the_job_after_max_attempts(run_async: Any, fake: Any) -> None:
    fake.unavailable = True
    job = submit("good")
    for _ in range(3):
        Job.objects.filter(id=job.id).update(run_after=None, queued_at=timezone.now())
        run_async(flow.process_batch, [str(job.id)])
    job.refresh_from_db()
    assert (job.status, job.attempts, job.error["type"]) == ("failed", 3, "ServiceError")


def test_large_payloads_take_the_blob_path_both_ways(run_async: Any, fake: Any) -> None:
    # Over Modal's 2 MiB inline limit, under our 4 MiB result bound; random: pickle cannot shrink it.
    text = secrets.token_urlsafe(2 * 1024 * 1024)
    job = submit(text)
    with on_modal(app_name="modalkit-echo-dev", class_name="EchoService"):
        run_async(flow.process_batch, [str(job.id)])
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.result["length"] == len(text)
    assert job.result["text"] == text
    assert fake.stats.blob_uploads >= 1
    assert fake.stats.blob_downloads >= 1


# --- a real worker process ---------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_async_jobs_through_a_worker_process_on_modal(
    start_worker: Any, live_server: Any, api_key: str, fresh_modal_fake: Any
) -> None:
    start_worker(INFERENCE="modal")
    assert "MODAL_SERVER_URL" in os.environ  # the worker inherits the fake's address
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {api_key}"}) as http:
        texts = [f"a great film {n}" for n in range(30)] + ["explode"]
        requests = [{"message": {"text": text}, "success_queue": "q", "failure_queue": "e"} for text in texts]
        job_ids = [http.post("/api/async/predict", json=request).json()["job_id"] for request in requests]

        def all_finished() -> list[dict[str, Any]] | None:
            bodies = [http.get(f"/api/jobs/{job_id}").json() for job_id in job_ids]
            return bodies if all(body["status"] in {"succeeded", "failed"} for body in bodies) else None

        bodies = wait_until(all_finished, timeout=60, what="the worker to run every job on Modal")
    assert [body["status"] for body in bodies] == ["succeeded"] * 30 + ["failed"]
    assert bodies[-1]["error"] == {"type": "ValueError", "message": "the model cannot read 'explode'"}
    stats = fresh_modal_fake.stats
    assert stats.inputs == 31
    assert stats.calls_per_input == 1.0
    # One worker process kept many calls in flight: Modal's batching received batches.
    assert max(stats.batch_sizes) > 1
