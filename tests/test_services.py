"""Services: submitting, reading and steering jobs and deliveries."""

from __future__ import annotations

from typing import Any

import pytest

import modalkit_django
from modalkit_django.exceptions import (
    InvalidJobState,
    JobNotFound,
    PermanentDeliveryError,
)
from modalkit_django.jobs import control
from modalkit_django.jobs import submit as submit_module
from modalkit_django.models import Job, QueueDelivery, SendResult

from . import flow
from .flow import OUTPUT, claim_one, pending_delivery

pytestmark = pytest.mark.django_db


submit = flow.submit


def test_submit_wakes_a_worker_only_on_commit(django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        job = submit(success_queue="q", meta={"a": 1})
    assert job.status == Job.Status.QUEUED
    assert job.model_name == "sentiment"
    assert job.queued_at is not None  # due now, by the database's clock (read back at insert)
    assert len(callbacks) == 1


def test_get_job_is_scoped_to_its_owner(user: Any, other_user: Any) -> None:
    job = submit(owner=user)
    assert modalkit_django.get_job(job_id=job.id, owner=user) == job
    with pytest.raises(JobNotFound):
        modalkit_django.get_job(job_id=job.id, owner=other_user)
    with pytest.raises(JobNotFound):
        modalkit_django.get_job(job_id=job.id, owner=None)


def test_cancel_only_queued_jobs(django_capture_on_commit_callbacks: Any) -> None:
    job = submit(failure_queue="err")
    with django_capture_on_commit_callbacks() as callbacks:
        modalkit_django.cancel_job(job=job)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELED
    [delivery] = job.deliveries.all()
    assert delivery.payload["error_type"] == "Canceled"
    assert len(callbacks) == 1  # the failure notice goes out at once, with this wake-up
    assert QueueDelivery.objects.due().filter(id=delivery.id).exists()  # for any delivery loop
    with pytest.raises(InvalidJobState, match="it is canceled"):
        modalkit_django.cancel_job(job=job)


def test_rerun_runs_a_finished_job_again_with_new_message_ids(django_capture_on_commit_callbacks: Any) -> None:
    job = claim_one(submit(success_queue="q"))
    [first] = flow.finish([(job, OUTPUT)])
    with django_capture_on_commit_callbacks() as callbacks:
        rerun = modalkit_django.rerun_job(job=job)
    assert (rerun.status, rerun.reruns, rerun.attempts, rerun.result) == ("queued", 1, 0, None)
    assert len(callbacks) == 1
    [second] = flow.finish([(claim_one(rerun), OUTPUT)])
    assert second.message_id == f"{job.id}:success:rerun1"
    assert first.message_id != second.message_id
    assert QueueDelivery.objects.filter(job=job).count() == 2


def test_rerun_refuses_unfinished_jobs() -> None:
    with pytest.raises(InvalidJobState, match="it is queued"):
        modalkit_django.rerun_job(job=submit())


def test_redeliver_resets_a_dead_delivery(django_capture_on_commit_callbacks: Any) -> None:
    delivery = pending_delivery()
    flow.record([SendResult(delivery, error=PermanentDeliveryError("no"))])
    with django_capture_on_commit_callbacks() as callbacks:
        modalkit_django.redeliver(delivery=delivery)
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    assert delivery.last_error  # kept for the record until the next attempt
    assert len(callbacks) == 1


@pytest.mark.parametrize("owned", [True, False], ids=["api-key", "static-key"])
def test_a_concurrent_duplicate_idempotency_key_returns_the_winner(
    monkeypatch: pytest.MonkeyPatch, user: Any, owned: bool
) -> None:
    owner = user if owned else None
    winner = submit(idempotency_key="k", owner=owner)
    real_lookup = submit_module.job_for_key
    lookups: list[Job | None] = []

    def first_misses(*args: Any) -> Job | None:
        # The first lookup misses, as it does when the winner has not committed yet;
        # only the unique constraint can then stop a second job.
        lookups.append(real_lookup(*args) if lookups else None)
        return lookups[-1]

    monkeypatch.setattr(submit_module, "job_for_key", first_misses)
    replay = submit(idempotency_key="k", owner=owner)
    assert len(lookups) == 2  # the insert failed and the second lookup found the winner
    assert (replay.id, replay.replayed) == (winner.id, True)
    assert Job.objects.count() == 1


def test_bulk_actions_commit_and_wake_workers_a_chunk_at_a_time(
    monkeypatch: pytest.MonkeyPatch, recording_waker: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """A selection of any size: one transaction and one wake-up per chunk, workers start on
    the first while the next is changed; the rows left alone are counted by their status."""
    monkeypatch.setattr(control, "CHUNK", 3)
    finished = [claim_one(submit()) for _ in range(7)]
    flow.finish([(job, OUTPUT) for job in finished])
    waiting = submit()
    with django_capture_on_commit_callbacks(execute=True):
        result = modalkit_django.rerun_jobs(Job.objects.all())
    assert (result.done, result.left_alone) == (7, {"queued": 1})
    # Eight rows in three chunks (ids are random: the queued one is in any of them).
    assert len(recording_waker.jobs) == 3 and sum(map(len, recording_waker.jobs)) == 7
    assert waiting.id not in {job_id for ids in recording_waker.jobs for job_id in ids}
    with django_capture_on_commit_callbacks(execute=True):
        result = modalkit_django.cancel_jobs(Job.objects.all())
    assert (result.done, result.left_alone) == (8, {})
    assert set(Job.objects.values_list("status", flat=True)) == {"canceled"}
