"""Every broker a URL can choose, end to end: the API, the broker, a worker process, the result.

Each test runs once per broker (``any_broker``: Redis, RabbitMQ, NATS JetStream, their
shared servers on this machine), on a queue of its own. Workers here look in the
database only once a minute, so a job that runs in seconds was woken through the broker.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from modalkit_django.models import Job

from .brokers import peer
from .conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# An idle worker's look at the database: rarely, so that only a wake-up runs a job soon.
RARE_POLLS = {"POLL_INTERVAL_SECONDS": 60, "SWEEP_INTERVAL_SECONDS": 3600, "RECORD_HEARTBEATS": False}
WOKEN_WITHIN = 20.0


@pytest.fixture
def http(live_server: Any, api_key: str) -> httpx.Client:
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {api_key}"}) as client:
        yield client


def submit(http: httpx.Client, text: str = "I love this great film") -> str:
    response = http.post("/api/async/predict", json={"message": {"text": text}})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def wait_succeeded(job_ids: list[str], what: str) -> None:
    def settled() -> bool:
        return set(Job.objects.filter(id__in=job_ids).values_list("status", flat=True)) == {"succeeded"}

    wait_until(settled, timeout=WOKEN_WITHIN, interval=0.1, what=what)


def test_jobs_submitted_through_the_api_run_on_a_worker_the_broker_wakes_even_after_losing_its_queue(
    any_broker: dict[str, str], start_any_worker: Any, http: httpx.Client
) -> None:
    server, queue = peer(any_broker["kind"]), any_broker["queue"]
    start_any_worker(RARE_POLLS)
    wait_succeeded([submit(http)], "the first job (the worker's first look, or its wake-up)")
    job_id = submit(http)  # the worker is idle now, and looks again in a minute
    wait_succeeded([job_id], f"the {any_broker['kind']} wake-up")
    body = http.get(f"/api/jobs/{job_id}").json()
    assert (body["status"], body["result"]["sentiment"], body["attempts"]) == ("succeeded", "positive", 1)
    wait_until(lambda: server.backlog(queue) == 0, what="every wake-up read and acknowledged")

    server.lose(queue)  # the stream or queue, its messages, its consumers
    # The worker makes it again (Redis: the consumer group; NATS: the stream and its consumer).
    wait_until(lambda: server.backlog(queue) is not None, timeout=WOKEN_WITHIN, what="the queue to be read again")
    job_ids = [submit(http, f"good {n}") for n in range(10)]
    wait_succeeded(job_ids, "the jobs sent after the queue was lost")
    wait_until(lambda: server.backlog(queue) == 0, what="an empty queue again")
