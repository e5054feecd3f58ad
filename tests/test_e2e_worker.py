"""The whole async path with real processes: HTTP API → Postgres → Redis → worker → queue."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from modalkit_django import broker
from modalkit_django.models import Job, QueueDelivery
from modalkit_django.worker import tasks

from .conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def poll_job(client: httpx.Client, job_id: str, *, until: set[str]) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body = client.get(f"/api/jobs/{job_id}").json()
        return body if body["status"] in until else None

    return wait_until(finished, timeout=30, what=f"job {job_id} to reach {until}")


@pytest.fixture
def http(live_server: Any, api_key: str) -> httpx.Client:
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {api_key}"}) as client:
        yield client


def test_job_succeeds_and_its_result_is_delivered(start_worker: Any, http: httpx.Client) -> None:
    start_worker()
    response = http.post(
        "/api/async/predict",
        json={
            "message": {"text": "I love this great film"},
            "success_queue": "sentiment_results",
            "failure_queue": "sentiment_errors",
            "meta": {"request_id": "req-1"},
        },
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    body = poll_job(http, job_id, until={"succeeded", "failed"})
    assert body["status"] == "succeeded"
    assert body["result"]["sentiment"] == "positive"
    assert body["attempts"] == 1

    def sent() -> list[dict[str, Any]] | None:
        deliveries = http.get(f"/api/jobs/{job_id}").json()["deliveries"]
        return deliveries if deliveries and deliveries[0]["status"] == "sent" else None

    [delivery] = wait_until(sent, what="the success delivery to be sent")
    assert delivery["route"] == "success"
    assert delivery["queue_name"] == "sentiment_results"
    row = QueueDelivery.objects.get(job_id=job_id)
    assert row.payload["status"] == "success"
    assert row.payload["sentiment"] == "positive"
    assert row.payload["job_id"] == job_id
    assert row.payload["meta"] == {"request_id": "req-1"}
    assert row.sent_at is not None


def test_pipeline_error_fails_the_job_and_delivers_the_failure(start_worker: Any, http: httpx.Client) -> None:
    start_worker()
    request = {
        "message": {"text": "this will explode"},
        "success_queue": "sentiment_results",
        "failure_queue": "sentiment_errors",
        "meta": {"request_id": "req-2"},
    }
    job_id = http.post("/api/async/predict", json=request).json()["job_id"]

    body = poll_job(http, job_id, until={"succeeded", "failed"})
    assert body["status"] == "failed"
    assert body["error"] == {"type": "ValueError", "message": "the model cannot read 'explode'"}
    assert body["result"] is None

    wait_until(
        lambda: QueueDelivery.objects.filter(job_id=job_id, status="sent").exists(),
        what="the failure delivery to be sent",
    )
    delivery = QueueDelivery.objects.get(job_id=job_id)
    assert delivery.route == "failure"
    assert delivery.queue_name == "sentiment_errors"
    assert delivery.payload["status"] == "error"
    assert delivery.payload["error"] == "the model cannot read 'explode'"
    assert delivery.payload["original_message"] == request


def test_every_message_is_acknowledged(
    start_worker: Any, http: httpx.Client, redis_broker: dict[str, str], redis_client: Any
) -> None:
    start_worker()
    job_ids = [
        http.post("/api/async/predict", json={"message": {"text": f"good {n}"}}).json()["job_id"] for n in range(30)
    ]
    for job_id in job_ids:
        poll_job(http, job_id, until={"succeeded"})
    wait_until(
        lambda: redis_client.xpending(redis_broker["queue"], "taskiq")["pending"] == 0,
        what="the worker to acknowledge every message",
    )
    assert redis_client.xlen(redis_broker["queue"]) == 0  # and to delete them


def test_duplicate_messages_run_the_job_once(start_worker: Any, http: httpx.Client) -> None:
    start_worker()
    job_id = http.post("/api/async/predict", json={"message": {"text": "good"}}).json()["job_id"]
    # Two more wake-ups for the same job, as a redelivered or re-swept message would be.
    broker.kick(tasks.run_job, job_id)
    broker.kick(tasks.run_job, job_id)

    poll_job(http, job_id, until={"succeeded"})
    # Each claim counts an attempt: one means the inference ran once.
    assert Job.objects.get(id=job_id).attempts == 1
