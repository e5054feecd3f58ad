"""The sweep: lost workers, lost wake-ups, expiry, due deliveries and the purge."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from modalkit_django import services
from modalkit_django.exceptions import (
    DeliveryError,
    InferenceUnavailable,
)
from modalkit_django.models import Job, QueueDelivery, SendResult

from . import flow
from .flow import OUTPUT, claim_one, pending_delivery

pytestmark = pytest.mark.django_db


submit = flow.submit


def test_sweep_reclaims_a_job_whose_worker_died_and_wakes_it() -> None:
    job = claim_one(submit())
    Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    result = flow.sweep()
    assert result.reclaimed == 1
    assert result.jobs_to_wake == [job.id]
    job.refresh_from_db()
    assert (job.status, job.attempts, job.lease_token) == ("queued", 1, None)
    assert job.error["type"] == "WorkerLost"


def test_sweep_fails_a_job_that_lost_its_worker_too_often() -> None:
    job = claim_one(submit(failure_queue="err"))
    Job.objects.filter(id=job.id).update(attempts=3, lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    result = flow.sweep()
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert result.jobs_to_wake == []
    [delivery] = job.deliveries.all()
    assert delivery.payload["error_type"] == "WorkerLost"
    assert result.deliveries_to_send == [delivery.id]


def test_sweep_rewakes_a_job_whose_message_was_lost() -> None:
    job = submit()
    assert flow.sweep().jobs_to_wake == []
    Job.objects.filter(id=job.id).update(enqueued_at=timezone.now() - dt.timedelta(minutes=10))
    assert flow.sweep().jobs_to_wake == [job.id]
    # Not again until another REQUEUE_AFTER_SECONDS has passed.
    assert flow.sweep().jobs_to_wake == []


def test_sweep_wakes_a_retried_job_once_its_backoff_is_over() -> None:
    job = claim_one(submit())
    flow.finish([(job, InferenceUnavailable("down"))])
    assert flow.sweep().jobs_to_wake == []
    Job.objects.filter(id=job.id).update(run_after=timezone.now() - dt.timedelta(seconds=1))
    assert flow.sweep().jobs_to_wake == [job.id]


def test_sweep_expires_jobs_that_waited_too_long() -> None:
    job = submit(failure_queue="err")
    Job.objects.filter(id=job.id).update(queued_at=timezone.now() - dt.timedelta(hours=2))
    result = flow.sweep()
    job.refresh_from_db()
    assert result.expired == 1
    assert job.status == Job.Status.EXPIRED
    assert job.deliveries.get().payload["error_type"] == "Expired"


def test_sweep_hands_due_deliveries_to_the_delivery_task_once() -> None:
    delivery = pending_delivery()
    assert flow.sweep().deliveries_to_send == []
    QueueDelivery.objects.filter(id=delivery.id).update(next_attempt_at=timezone.now())
    assert flow.sweep().deliveries_to_send == [delivery.id]
    assert flow.sweep().deliveries_to_send == []


def test_sweep_purges_finished_jobs_past_their_ttl() -> None:
    old = claim_one(submit(success_queue="q"))
    [delivery] = flow.finish([(old, OUTPUT)])
    flow.record([SendResult(delivery, external_id="x")])
    recent = submit()
    Job.objects.filter(id=old.id).update(finished_at=timezone.now() - dt.timedelta(days=30))
    assert flow.sweep().purged == 1
    assert list(Job.objects.all()) == [recent]
    assert not QueueDelivery.objects.exists()


def test_a_rerun_of_an_old_job_is_not_expired() -> None:
    job = claim_one(submit())
    flow.finish([(job, OUTPUT)])
    Job.objects.filter(id=job.id).update(
        created_at=timezone.now() - dt.timedelta(days=3), queued_at=timezone.now() - dt.timedelta(days=3)
    )
    services.rerun_job(job=job)
    assert flow.sweep().expired == 0
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED


def test_the_purge_keeps_results_still_being_delivered() -> None:
    delivery = pending_delivery()
    flow.record([SendResult(delivery, error=DeliveryError("down"))])
    Job.objects.filter(id=delivery.job_id).update(finished_at=timezone.now() - dt.timedelta(days=30))
    assert flow.sweep().purged == 0
    assert QueueDelivery.objects.filter(id=delivery.id, status="retrying").exists()
    flow.record([SendResult(QueueDelivery.objects.get(id=delivery.id), external_id="x")])
    assert flow.sweep().purged == 1


def test_a_cancellation_notice_is_not_sent_twice_by_the_sweep() -> None:
    job = submit(failure_queue="e")
    services.cancel_job(job=job)  # its wake-up sends the notice
    assert flow.sweep().deliveries_to_send == []
