"""Scheduled and bounded jobs: ``run_after`` (not before), ``deadline``/``ttl`` (not after)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

import modalkit_django
from modalkit_django.conf import get_config
from modalkit_django.jobs.scheduling import Schedule
from modalkit_django.jobs.submit import request_fingerprint
from modalkit_django.models import Job, QueueDelivery

from . import flow
from .conftest import wait_until
from .test_modal_calls import on_modal

pytestmark = pytest.mark.django_db

FAST_TIMERS = {"LEASE_SECONDS": 2, "HEARTBEAT_SECONDS": 0.5, "SWEEP_INTERVAL_SECONDS": 0.5}


def soon(seconds: float) -> dt.datetime:
    return timezone.now() + dt.timedelta(seconds=seconds)


def submit(**schedule: Any) -> Job:
    return flow.submit(failure_queue="errors", schedule=Schedule(**schedule))


# --- the API --------------------------------------------------------------------------------


@pytest.fixture
def post(api: Client, recording_waker: Any) -> Any:
    def post(**fields: Any) -> Any:
        body = {"message": {"text": "good"}, **fields}
        return api.post("/api/async/predict", data=json.dumps(body, default=str), content_type="application/json")

    return post


@pytest.mark.django_db(transaction=True)
def test_a_scheduled_job_is_stored_and_not_woken_at_submit(post: Any, api: Client, recording_waker: Any) -> None:
    run_after = soon(3600).replace(microsecond=0)
    response = post(run_after=run_after.isoformat())
    assert response.status_code == 202, response.content
    job = Job.objects.get(id=response.json()["job_id"])
    assert (job.run_after, job.queued_at) == (run_after, run_after)
    assert recording_waker.jobs == []  # no wake-up: idle workers' polls find it once due
    assert flow.claim([job.id]) == []  # and a worker woken early leaves it
    body = api.get(f"/api/jobs/{job.id}").json()
    assert dt.datetime.fromisoformat(body["run_after"]) == run_after
    assert body["expires_at"] is None

    unscheduled = Job.objects.get(id=post().json()["job_id"])
    assert recording_waker.jobs == [[unscheduled.id]]


@pytest.mark.django_db(transaction=True)
def test_ttl_and_deadline_are_stored_as_expires_at(post: Any, api: Client) -> None:
    before = timezone.now()
    job = Job.objects.get(id=post(ttl=90).json()["job_id"])
    assert job.expires_at is not None
    assert before + dt.timedelta(seconds=90) <= job.expires_at <= timezone.now() + dt.timedelta(seconds=90)
    run_after = soon(600).replace(microsecond=0)
    scheduled = Job.objects.get(id=post(run_after=run_after.isoformat(), ttl=60).json()["job_id"])
    assert scheduled.expires_at == run_after + dt.timedelta(seconds=60)  # ttl counts from when it is due
    deadline = soon(120).replace(microsecond=0)
    bounded = post(deadline=deadline.isoformat(), priority="low").json()["job_id"]
    body = api.get(f"/api/jobs/{bounded}").json()
    assert (dt.datetime.fromisoformat(body["expires_at"]), body["priority"]) == (deadline, "low")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"run_after": "2030-01-01T09:00:00"}, "timezone"),
        ({"deadline": "2030-01-01T09:00:00"}, "timezone"),
        ({"run_after": "next tuesday"}, "datetime"),
        ({"run_after": "2099-01-01T09:00:00Z"}, "more than 30 days ahead"),
        ({"ttl": 0}, "greater than 0"),
        ({"ttl": -5}, "greater than 0"),
        ({"ttl": 31 * 86400}, "less than or equal to 2592000"),
        ({"ttl": 60, "deadline": "__soon__"}, "give deadline or ttl, not both"),
        ({"deadline": "2020-01-01T00:00:00Z"}, "deadline has passed"),
        ({"deadline": "__soon__", "run_after": "__later__"}, "deadline is not after run_after"),
    ],
)
def test_bad_scheduling_fields_are_a_422(post: Any, fields: dict[str, Any], problem: str) -> None:
    values = {"__soon__": soon(600).isoformat(), "__later__": soon(1200).isoformat()}
    response = post(**{name: values.get(value, value) for name, value in fields.items()})
    assert response.status_code == 422, response.content
    assert problem in json.dumps(response.json()["detail"])
    assert not Job.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_any_offset_iso_8601_allows_is_stored_as_the_same_instant(post: Any, api: Client) -> None:
    # Found by the fuzzer: PostgreSQL refuses offsets beyond ±15:59, ISO 8601 does not.
    run_after = "2026-01-01T06:44:05-16:56"
    response = post(run_after=run_after)
    assert response.status_code == 202, response.content
    stored = Job.objects.get(id=response.json()["job_id"]).run_after
    assert stored == dt.datetime.fromisoformat(run_after)
    assert post(run_after="0001-01-01T00:00:00+05:00").status_code == 422  # before year 1 in UTC


def test_openapi_documents_the_scheduling_fields(client: Client) -> None:
    components = client.get("/api/openapi.json").json()["components"]["schemas"]
    request = components["AsyncPredictRequest"]["properties"]
    assert {"type": "string", "format": "date-time"} in request["run_after"]["anyOf"]
    assert {"type": "string", "format": "date-time"} in request["deadline"]["anyOf"]
    ttl = next(option for option in request["ttl"]["anyOf"] if option["type"] == "number")
    assert (ttl["exclusiveMinimum"], ttl["maximum"]) == (0, 2592000)
    job = components["Job"]["properties"]
    assert {"type": "string", "format": "date-time"} in job["expires_at"]["anyOf"]
    assert {"type": "string", "format": "date-time"} in job["run_after"]["anyOf"]


def test_an_idempotency_key_reused_with_another_schedule_is_a_conflict() -> None:
    from modalkit_django.exceptions import IdempotencyConflict

    first = modalkit_django.submit_job(message={"text": "x"}, idempotency_key="k", schedule=Schedule(priority="high"))
    again = modalkit_django.submit_job(message={"text": "x"}, idempotency_key="k", schedule=Schedule(priority="high"))
    assert (again.id, again.replayed) == (first.id, True)
    with pytest.raises(IdempotencyConflict):
        modalkit_django.submit_job(message={"text": "x"}, idempotency_key="k")
    # Without scheduling fields, a request's fingerprint is what it was before they existed.
    plain = modalkit_django.submit_job(message={"text": "y"}, idempotency_key="plain")
    assert plain.request_fingerprint == request_fingerprint("sentiment", {"text": "y"}, "", "", {})


# --- claimed once due, expired past the deadline ----------------------------------------------


def test_a_scheduled_job_is_claimed_once_it_is_due_and_not_before(
    recording_waker: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        job = submit(run_after=soon(3600))
        unscheduled = submit()
    assert recording_waker.jobs == [[unscheduled.id]]  # no wake-up at submit for the scheduled one
    Job.objects.filter(id=unscheduled.id).delete()
    assert Job.objects.claim(limit=10, lease_seconds=30) == []  # any claim, not only one for this job
    Job.objects.filter(id=job.id).update(run_after=timezone.now(), queued_at=timezone.now())
    assert ids_of(Job.objects.claim(limit=10, lease_seconds=30)) == {job.id}


def ids_of(jobs: list[Job]) -> set[Any]:
    return {job.id for job in jobs}


def test_the_sweep_expires_a_job_past_its_deadline_and_sends_its_failure() -> None:
    job = submit(ttl=60)
    waiting = submit()
    assert flow.sweep().expired == 0
    Job.objects.filter(id=job.id).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert flow.claim([job.id]) == []  # never started past its deadline
    result = flow.sweep()
    job.refresh_from_db()
    assert (result.expired, job.status, job.attempts) == (1, "expired", 0)
    assert job.error["type"] == "Expired"
    assert "not started by its deadline" in job.error["message"]
    delivery = job.deliveries.get()
    assert (delivery.route, delivery.queue_name) == ("failure", "errors")
    assert "not started by its deadline" in delivery.payload["error"]
    assert Job.objects.get(id=waiting.id).status == "queued"


def test_a_deadline_later_than_the_global_timeout_replaces_it() -> None:
    job = submit(ttl=86400)
    Job.objects.filter(id=job.id).update(queued_at=timezone.now() - dt.timedelta(hours=2))  # past the 1 h default
    assert flow.sweep().expired == 0
    assert Job.objects.get(id=job.id).status == "queued"


def test_deadlines_expire_with_the_global_timeout_off(tmp_path: Path) -> None:
    job = submit(ttl=60)
    Job.objects.filter(id=job.id).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    overlay = tmp_path / "no-timeout.yaml"
    overlay.write_text("app_settings:\n  async_config:\n    timeout: null\n")
    with flow.with_modalkit(CONFIG=[str(settings.MODALKIT["CONFIG"]), str(overlay)]):
        assert get_config().app_settings.async_config.timeout is None
        assert flow.sweep().expired == 1


def test_a_scheduled_job_waits_its_global_timeout_from_run_after() -> None:
    job = submit(run_after=soon(1800))
    Job.objects.filter(id=job.id).update(created_at=timezone.now() - dt.timedelta(hours=2))
    assert flow.sweep().expired == 0
    assert Job.objects.get(id=job.id).status == "queued"


def test_a_rerun_forgets_the_first_runs_deadline() -> None:
    job = submit(ttl=60)
    Job.objects.filter(id=job.id).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    flow.sweep()
    modalkit_django.rerun_job(job=job)
    assert Job.objects.get(id=job.id).expires_at is None
    assert ids_of(flow.claim([job.id])) == {job.id}


# --- the ORM path (SQLite) ----------------------------------------------------------------------


@pytest.mark.django_db(databases=["default", "embedded"])
def test_deadlines_and_run_after_on_sqlite() -> None:
    embedded = Job.objects.db_manager("embedded")
    now = timezone.now()
    past, later = now - dt.timedelta(seconds=1), now + dt.timedelta(hours=1)
    overdue, _scheduled, plain = embedded.bulk_create(
        Job(model_name="sentiment", message={}, **fields) for fields in ({"expires_at": past}, {"run_after": later}, {})
    )
    assert ids_of(embedded.claim(limit=10, lease_seconds=30)) == {plain.id}
    [expired] = embedded.expire_waiting(timeout=None, limit=10)
    assert (expired.id, expired.status) == (overdue.id, "expired")
    assert "deadline" in embedded.get(id=overdue.id).error["message"]


# --- the Modal fake: a job past its deadline never reaches Modal ----------------------------------


@pytest.fixture
def fake(fresh_modal_fake: Any) -> Iterator[Any]:
    with on_modal(timeout=10):
        yield fresh_modal_fake


def test_a_job_past_its_deadline_makes_no_modal_call(run_async: Any, fake: Any) -> None:
    late, due = submit(ttl=60), submit(run_after=timezone.now() - dt.timedelta(seconds=1))
    Job.objects.filter(id=late.id).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    run_async(flow.process_batch, [late.id, due.id])
    assert Job.objects.get(id=late.id).status == "queued"  # for the sweep to expire
    assert Job.objects.get(id=due.id).status == "succeeded"
    assert len(fake.stats.spawned_calls) == 1


# --- a real worker --------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_worker_runs_a_scheduled_job_only_after_its_time(start_worker: Any) -> None:
    start_worker(FAST_TIMERS)
    warm = modalkit_django.submit_job(message={"text": "a great film"})
    wait_until(lambda: Job.objects.get(id=warm.id).status == "succeeded", timeout=30, what="the worker to start")
    run_after = soon(2)
    job = modalkit_django.submit_job(message={"text": "a great film"}, schedule=Schedule(run_after=run_after))
    wait_until(lambda: Job.objects.get(id=job.id).status == "succeeded", timeout=30, what="the scheduled job")
    job.refresh_from_db()
    assert job.started_at is not None and job.started_at >= run_after
    assert job.attempts == 1


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_job_nobody_started_by_its_deadline_expires_and_its_failure_is_delivered(start_worker: Any) -> None:
    job = modalkit_django.submit_job(
        message={"text": "a great film"}, failure_queue="sentiment_errors", schedule=Schedule(ttl=0.5)
    )
    time.sleep(1)  # no worker yet: the deadline passes with the wake-up still in the stream
    start_worker(FAST_TIMERS)
    wait_until(
        lambda: QueueDelivery.objects.filter(job_id=job.id, status="sent").exists(),
        timeout=30,
        what="the failure message",
    )
    job.refresh_from_db()
    assert (job.status, job.attempts, job.started_at) == ("expired", 0, None)
    delivery = job.deliveries.get()
    assert (delivery.route, delivery.queue_name) == ("failure", "sentiment_errors")
    assert delivery.payload["error_type"] == "Expired"
    assert "not started by its deadline" in delivery.payload["error"]
