"""Priorities: a claim woken for low jobs also takes the queued jobs of a higher priority.

Wake-ups name job ids, and a high job's waits behind every low one the broker already
holds; the claim is what lets it overtake them (models/postgres.py, and the ORM path on
SQLite). Its own wake-up later finds it claimed and does nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

import modalkit_django
from modalkit_django import broker
from modalkit_django.jobs.scheduling import Schedule
from modalkit_django.jobs.submit import new_job
from modalkit_django.models import Job
from modalkit_django.worker import engine, tasks

from . import flow
from .conftest import wait_until
from .test_modal_calls import on_modal

pytestmark = pytest.mark.django_db

LOW, NORMAL, HIGH = Job.Priority.LOW, Job.Priority.NORMAL, Job.Priority.HIGH


def queued(count: int, priority: int = NORMAL, *, using: str = "default", **fields: Any) -> list[Job]:
    """Queued jobs, oldest first (a microsecond apart)."""
    start = fields.pop("queued_at", timezone.now() - dt.timedelta(seconds=1))
    return Job.objects.db_manager(using).bulk_create(
        Job(model_name="sentiment", message={"text": f"good {n}"}, priority=priority,
            queued_at=start + dt.timedelta(microseconds=n), **fields)
        for n in range(count)
    )  # fmt: skip


def ids(jobs: list[Job]) -> set[Any]:
    return {job.id for job in jobs}


# --- the claim, on PostgreSQL -------------------------------------------------------------


def claim(limit: int, *, using: str = "default") -> list[Job]:
    """Any worker's claim: whatever woke it."""
    return Job.objects.db_manager(using).claim(limit=limit, lease_seconds=30)


def test_a_claim_takes_the_highest_priority_first_then_the_longest_due() -> None:
    first_low, second_low, third_low = queued(3, LOW)
    old_normal, new_normal = queued(2, NORMAL)
    [high] = queued(1, HIGH)
    assert ids(claim(2)) == {high.id, old_normal.id}
    assert ids(claim(2)) == {new_normal.id, first_low.id}
    assert ids(claim(2)) == {second_low.id, third_low.id}
    assert claim(2) == []


def test_a_high_job_submitted_after_a_flood_of_low_ones_is_the_next_claimed() -> None:
    lows = queued(500, LOW)
    claim(100)
    [high] = queued(1, HIGH)
    claimed = claim(100)
    assert high.id in ids(claimed)
    assert len({job.lease_token for job in claimed}) == 1  # one batch, one lease
    assert Job.objects.get(id=high.id).attempts == 1
    assert len(ids(claimed) & ids(lows)) == 99


def test_a_claim_takes_only_jobs_due_and_within_their_deadline() -> None:
    [low] = queued(1, LOW)
    later = timezone.now() + dt.timedelta(hours=1)
    queued(1, HIGH, run_after=later, queued_at=later)
    queued(1, HIGH, run_after=later)  # a run_after alone is honoured too
    queued(1, HIGH, expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert ids(claim(10)) == {low.id}


def test_a_duplicate_claim_takes_nothing_twice() -> None:
    [low] = queued(1, LOW)
    assert ids(claim(10)) == {low.id}
    assert claim(10) == []
    assert Job.objects.get(id=low.id).attempts == 1


# --- the ORM path (the embedded default's SQLite) ---------------------------------------------


@pytest.mark.django_db(databases=["default", "embedded"])
def test_the_same_claim_on_sqlite() -> None:
    embedded = Job.objects.db_manager("embedded")
    first_low, second_low = queued(2, LOW, using="embedded")
    [normal] = queued(1, NORMAL, using="embedded")
    [high] = queued(1, HIGH, using="embedded")
    later = timezone.now() + dt.timedelta(hours=1)
    queued(1, HIGH, using="embedded", run_after=later, queued_at=later)
    assert ids(claim(2, using="embedded")) == {high.id, normal.id}
    assert embedded.get(id=high.id).status == "running"
    assert ids(claim(2, using="embedded")) == {first_low.id, second_low.id}
    assert claim(2, using="embedded") == []


# --- the API ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_api_takes_and_shows_a_priority(api: Client, recording_waker: Any) -> None:
    def submit(body: dict[str, Any]) -> Any:
        return api.post("/api/async/predict", data=json.dumps(body), content_type="application/json")

    accepted = submit({"message": {"text": "good"}, "priority": "high"})
    assert accepted.status_code == 202, accepted.content
    job_id = accepted.json()["job_id"]
    assert Job.objects.get(id=job_id).priority == HIGH
    assert api.get(f"/api/jobs/{job_id}").json()["priority"] == "high"
    default = submit({"message": {"text": "good"}}).json()["job_id"]
    assert Job.objects.get(id=default).priority == NORMAL
    assert api.get("/api/jobs").json()["jobs"][0]["priority"] == "normal"

    refused = submit({"message": {"text": "good"}, "priority": "urgent"})
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert error["loc"][-1] == "priority"
    assert "'low', 'normal' or 'high'" in error["msg"]
    assert submit({"message": {"text": "good"}, "priority": 2}).status_code == 422


def test_openapi_lists_the_priorities(client: Client) -> None:
    components = client.get("/api/openapi.json").json()["components"]["schemas"]
    request = components["AsyncPredictRequest"]["properties"]["priority"]
    assert (request["enum"], request["default"]) == (["low", "normal", "high"], "normal")
    assert components["Job"]["properties"]["priority"]["enum"] == ["low", "normal", "high"]


def test_a_batch_builds_its_jobs_with_a_priority() -> None:
    # The job-building path batches share with single submits.
    job = new_job({"text": "x"}, None, "", "", None, None, "", None, Schedule(priority="low"))
    assert job.priority == LOW


# --- the Modal fake: the job taken along runs on Modal in the same batch -----------------------


@pytest.fixture
def fake(fresh_modal_fake: Any) -> Iterator[Any]:
    with on_modal(timeout=10):
        yield fresh_modal_fake


def test_a_high_job_runs_on_modal_ahead_of_older_low_ones(run_async: Any, fake: Any) -> None:
    lows = [flow.submit(schedule=Schedule(priority="low")) for _ in range(3)]
    high = flow.submit(schedule=Schedule(priority="high"))

    async def a_batch_of_two() -> None:
        batch_engine = engine.get_engine()
        await batch_engine.process_batch(2)
        await batch_engine.drain(30)

    run_async(a_batch_of_two)
    statuses = dict(Job.objects.values_list("id", "status"))
    assert statuses[high.id] == statuses[lows[0].id] == "succeeded"
    assert [statuses[job.id] for job in lows[1:]] == ["queued", "queued"]
    assert len(fake.stats.spawned_calls) == 2
    assert Job.objects.get(id=high.id).modal_call_id in fake.stats.spawned_calls


# --- a real worker ------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_high_job_submitted_after_a_flood_of_low_ones_finishes_before_most(start_worker: Any) -> None:
    lows = queued(1000, LOW)
    broker.submit(broker.akick_many(tasks.run_jobs, [[str(job.id) for job in lows]])).result(30)
    high = modalkit_django.submit_job(message={"text": "a great film"}, schedule=Schedule(priority="high"))
    start_worker()
    wait_until(lambda: not Job.objects.exclude(status="succeeded").exists(), timeout=60, what="every job to finish")
    finished = Job.objects.get(id=high.id).finished_at
    before = Job.objects.filter(priority=LOW, finished_at__lt=finished).count()
    assert before < 300, f"{before} of 1000 low jobs finished before the high one"
    assert Job.objects.get(id=high.id).attempts == 1
