"""Async jobs on Modal as detached calls: spawn, store the call id, re-attach, cancel.

The real ``modal`` SDK against the loopback fake, which counts every call (``FunctionMap``)
and records the calls it was asked to cancel. A worker "dies" here by leaving its job
leased and its call running; the real thing (SIGKILL) is the e2e test at the end.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

import modalkit_django
from modalkit_django import clients
from modalkit_django.clients import get_inference_backend
from modalkit_django.exceptions import InferenceUnavailable
from modalkit_django.models import Job, SweepState
from modalkit_django.worker import sweeper

from . import flow
from .conftest import wait_until

pytestmark = pytest.mark.django_db

MODAL = {"BACKEND": "modalkit_django.clients.modal.ModalBackend", "OPTIONS": {"class_name": "SentimentService"}}
FAST_TIMERS = {"LEASE_SECONDS": 2, "HEARTBEAT_SECONDS": 0.5, "SWEEP_INTERVAL_SECONDS": 0.5}


def on_modal(**options: Any) -> Any:
    inference = {**MODAL, "OPTIONS": {**MODAL["OPTIONS"], **options}}
    return override_settings(MODALKIT={**settings.MODALKIT, "INFERENCE": inference})


@pytest.fixture
def fake(fresh_modal_fake: Any) -> Iterator[Any]:
    with on_modal(timeout=10):
        yield fresh_modal_fake


def submit(text: str = "a great film", **kwargs: Any) -> Job:
    return modalkit_django.submit_job(message={"text": text}, failure_queue="errors", **kwargs)


def start_and_die(run_async: Callable[..., Any], job: Job) -> str:
    """What a worker does before it waits: claim the job, spawn its call, store the id. Then it dies."""
    [claimed] = flow.claim([job.id])
    claimed.modal_call_id = run_async(get_inference_backend().aspawn, claimed.model_name, claimed.message)
    assert Job.objects.attach_calls([claimed]) == {claimed.id}
    assert claimed.modal_call_id is not None
    return claimed.modal_call_id


def reclaim(job: Job) -> None:
    """The sweep after the dead worker's lease ran out: the job is queued again."""
    Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert flow.sweep().reclaimed == 1


# --- spawn and store -----------------------------------------------------------------------


def test_each_job_spawns_one_call_and_stores_its_id(run_async: Any, fake: Any) -> None:
    jobs = [submit(f"good film {n}") for n in range(12)]
    run_async(flow.process_batch, [job.id for job in jobs])
    stats = fake.stats
    stored = dict(Job.objects.values_list("id", "modal_call_id"))
    assert set(Job.objects.values_list("status", flat=True)) == {"succeeded"}
    assert sorted(stored.values()) == sorted(stats.spawned_calls)
    assert stats.function_maps == stats.inputs == 12
    # Spawned together: Modal's @modal.batched still ran them in batches.
    assert max(stats.batch_sizes) > 1


def test_a_retried_job_forgets_its_ended_call_and_a_rerun_too(fake: Any) -> None:
    job = submit()
    [claimed] = flow.claim([job.id])
    claimed.modal_call_id = "fc-ended"
    Job.objects.attach_calls([claimed])
    flow.finish([(claimed, InferenceUnavailable("gone for a moment"))])
    assert Job.objects.values_list("status", "modal_call_id").get(id=job.id) == ("queued", None)

    Job.objects.filter(id=job.id).update(run_after=None, queued_at=timezone.now())
    [claimed] = flow.claim([job.id])
    claimed.modal_call_id = "fc-done"
    Job.objects.attach_calls([claimed])
    flow.finish([(claimed, flow.OUTPUT)])
    assert Job.objects.values_list("status", "modal_call_id").get(id=job.id) == ("succeeded", "fc-done")
    modalkit_django.rerun_job(job=job)
    assert Job.objects.values_list("status", "modal_call_id").get(id=job.id) == ("queued", None)


def test_a_call_id_is_not_stored_once_the_lease_is_gone(fake: Any) -> None:
    job = submit()
    [claimed] = flow.claim([job.id])
    reclaim(claimed)
    claimed.modal_call_id = "fc-orphan"
    assert Job.objects.attach_calls([claimed]) == set()
    assert Job.objects.get(id=job.id).modal_call_id is None


@pytest.mark.django_db(databases=["default", "embedded"])
def test_call_ids_are_stored_the_same_way_on_sqlite() -> None:
    embedded = Job.objects.db_manager("embedded")
    held, lost = (embedded.create(model_name="sentiment", message={"text": "good"}) for _ in range(2))
    [held] = embedded.claim(limit=1, lease_seconds=30, only=[held.id])
    [lost] = embedded.claim(limit=1, lease_seconds=30, only=[lost.id])
    embedded.filter(id=lost.id).update(lease_token=uuid.uuid4())  # reclaimed by another worker meanwhile
    held.modal_call_id, lost.modal_call_id = "fc-held", "fc-lost"
    assert embedded.attach_calls([held, lost]) == {held.id}
    assert dict(embedded.values_list("id", "modal_call_id")) == {held.id: "fc-held", lost.id: None}


# --- re-attach -------------------------------------------------------------------------------


def test_the_next_worker_reattaches_to_the_lost_workers_call(run_async: Any, fake: Any) -> None:
    job = submit()
    call_id = start_and_die(run_async, job)
    reclaim(job)

    run_async(flow.process_batch, [job.id])
    job.refresh_from_db()
    assert (job.status, job.attempts, job.modal_call_id) == ("succeeded", 2, call_id)
    assert job.result["sentiment"] == "positive"
    stats = fake.stats
    assert stats.spawned_calls == [call_id]
    assert stats.function_maps == stats.inputs == 1  # no second inference


@pytest.mark.parametrize("lose", ["expire_call", "forget_call"])
def test_a_lost_workers_call_that_is_gone_runs_again_once(run_async: Any, fake: Any, lose: str) -> None:
    job = submit()
    call_id = start_and_die(run_async, job)
    wait_until(lambda: fake.stats.method_calls == 1, what="the first call to run")
    getattr(fake, lose)(call_id)  # OutputExpiredError / NotFoundError on re-attach
    reclaim(job)

    run_async(flow.process_batch, [job.id])
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("succeeded", 2)
    stats = fake.stats
    assert len(stats.spawned_calls) == stats.function_maps == 2
    assert stats.spawned_calls[0] == call_id
    assert job.modal_call_id == stats.spawned_calls[1]


# --- deadline and cancel ---------------------------------------------------------------------


def test_a_job_past_the_deadline_cancels_its_call(run_async: Any, fake: Any) -> None:
    fake.delay = 1.0
    job = submit()
    with flow.with_modalkit(WORKER={"INFERENCE_TIMEOUT_SECONDS": 0.3}):
        run_async(flow.process_batch, [job.id])
    job.refresh_from_db()
    assert (job.status, job.error["type"]) == ("failed", "InferenceTimeout")
    assert fake.stats.cancelled_calls == [job.modal_call_id]
    time.sleep(1.3)
    assert fake.stats.method_calls == 0  # cancelled before its batch ran


@pytest.mark.django_db(transaction=True)  # the API reads the key on another connection
def test_cancel_a_running_modal_job_cancels_its_call(run_async: Any, fake: Any, api: Client, user: Any) -> None:
    fake.delay = 1.0
    job = submit(owner=user, success_queue="results")
    call_id = start_and_die(run_async, job)
    [running] = Job.objects.filter(id=job.id)

    response = api.post(f"/api/jobs/{job.id}/cancel", data="{}", content_type="application/json")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "canceled"
    assert fake.stats.cancelled_calls == [call_id]

    # The worker still waiting on that call has lost its lease: whatever it got is dropped.
    assert flow.finish([(running, flow.OUTPUT)]) == []
    job.refresh_from_db()
    assert (job.status, job.result, job.error["type"]) == ("canceled", None, "Canceled")
    assert list(job.deliveries.values_list("route", flat=True)) == ["failure"]
    time.sleep(1.3)
    assert fake.stats.method_calls == 0


@pytest.mark.django_db(transaction=True)
def test_a_running_job_without_a_modal_call_still_cannot_be_canceled(api: Client, user: Any) -> None:
    [running] = flow.claim([submit(owner=user).id])
    response = api.post(f"/api/jobs/{running.id}/cancel", data="{}", content_type="application/json")
    assert response.status_code == 409
    assert response.json() == {"detail": f"Cannot cancel job {running.id}: it is running"}


def test_the_admin_cancel_action_reaches_modal(
    run_async: Any, fake: Any, admin_client: Client, django_capture_on_commit_callbacks: Any
) -> None:
    fake.delay = 1.0
    job = submit()
    call_id = start_and_die(run_async, job)
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            reverse("admin:modalkit_django_job_changelist"),
            # post=yes: what the action's confirmation page sends back.
            {"action": "cancel_jobs", "_selected_action": [job.id], "post": "yes"},
        )
    assert Job.objects.get(id=job.id).status == "canceled"
    assert fake.stats.cancelled_calls == [call_id]
    assert call_id in admin_client.get(reverse("admin:modalkit_django_job_change", args=[job.id])).content.decode()


def test_a_job_the_sweep_ends_has_its_call_cancelled(run_async: Any, fake: Any, recording_waker: Any) -> None:
    fake.delay = 1.0
    job = submit()
    call_id = start_and_die(run_async, job)
    Job.objects.filter(id=job.id).update(attempts=3, lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    SweepState.objects.all().delete()

    result = run_async(sweeper.sweep_once, worker="test")
    assert (result.lost, result.calls_to_cancel) == (1, [call_id])
    assert Job.objects.get(id=job.id).status == "failed"  # out of attempts: WorkerLost
    assert fake.stats.cancelled_calls == [call_id]


# --- real worker processes -------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_while_modal_runs_the_call(start_worker: Any, fresh_modal_fake: Any) -> None:
    fresh_modal_fake.delay = 4.0  # the call is still running on Modal when its worker dies
    first = start_worker(FAST_TIMERS, INFERENCE="modal")
    job = modalkit_django.submit_job(message={"text": "a great film"}, success_queue="results")
    call_id = wait_until(lambda: Job.objects.get(id=job.id).modal_call_id, what="the worker to store its call id")

    first.kill()  # SIGKILL, while the call runs
    start_worker(FAST_TIMERS, INFERENCE="modal")
    wait_until(lambda: Job.objects.get(id=job.id).status == "succeeded", timeout=30, what="the second worker")
    job.refresh_from_db()
    assert (job.attempts, job.modal_call_id) == (2, call_id)
    assert job.result["sentiment"] == "positive"
    stats = fresh_modal_fake.stats
    assert stats.spawned_calls == [call_id]
    assert (stats.function_maps, stats.inputs, stats.batch_sizes) == (1, 1, [1])  # one inference, not two
    wait_until(lambda: job.deliveries.filter(status="sent").exists(), what="the result to be delivered")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_cancel_reaches_the_call_a_worker_waits_on(start_worker: Any, fresh_modal_fake: Any, api: Client) -> None:
    fresh_modal_fake.delay = 2.0
    start_worker(FAST_TIMERS, INFERENCE="modal")
    request = {"message": {"text": "a great film"}, "success_queue": "q", "failure_queue": "e"}
    job_id = api.post("/api/async/predict", data=json.dumps(request), content_type="application/json").json()["job_id"]
    call_id = wait_until(lambda: Job.objects.get(id=job_id).modal_call_id, what="the worker to store its call id")

    with on_modal(timeout=10):
        response = api.post(f"/api/jobs/{job_id}/cancel", data="{}", content_type="application/json")
    assert response.status_code == 200, response.content
    assert fresh_modal_fake.stats.cancelled_calls == [call_id]
    time.sleep(3)  # past the call's delay: the worker has had its answer
    job = Job.objects.get(id=job_id)
    assert (job.status, job.result) == ("canceled", None)
    assert not job.deliveries.filter(route="success").exists()
    stats = fresh_modal_fake.stats
    assert (stats.function_maps, stats.method_calls) == (1, 0)  # no second call, and the first never ran


def test_calls_cannot_be_canceled_through_a_backend_without_detached_calls(
    run_async: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The local backend runs in the worker: nothing of it runs apart to cancel, and the
    log says so instead of failing the cancel."""
    assert type(get_inference_backend()).__name__ == "LocalBackend"
    clients.cancel_calls(["fc-1", "fc-2"])
    run_async(clients.acancel_calls, ["fc-3"])
    clients.cancel_calls([])  # nothing to cancel: nothing to say
    said = [record.getMessage() for record in caplog.records if "Cannot cancel" in record.getMessage()]
    assert said == [
        "Cannot cancel 2 calls: LocalBackend has no detached calls",
        "Cannot cancel 1 calls: LocalBackend has no detached calls",
    ]
