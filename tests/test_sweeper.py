"""The sweep: lost workers, lost wake-ups, expiry, due deliveries and the purge."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from django.utils import timezone

import modalkit_django
from modalkit_django.conf import get_settings
from modalkit_django.exceptions import DeliveryError, InferenceUnavailable
from modalkit_django.models import Job, QueueDelivery, SendResult, SweepState
from modalkit_django.worker import sweeper

from . import flow
from .flow import OUTPUT, claim_one, pending_delivery, with_modalkit

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
    modalkit_django.rerun_job(job=job)
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
    modalkit_django.cancel_job(job=job)  # its wake-up sends the notice
    assert flow.sweep().deliveries_to_send == []


# --- under load: oldest first, once per period, the broker's epoch, the purge --------------


def queued_jobs(count: int, *, woken_minutes_ago: float) -> list[Job]:
    """``count`` queued jobs, oldest first, whose wake-ups went out that long ago."""
    now = timezone.now()
    return Job.objects.bulk_create(
        Job(
            model_name="sentiment",
            message={"text": str(n)},
            queued_at=now - dt.timedelta(minutes=woken_minutes_ago, seconds=count - n),
            enqueued_at=now - dt.timedelta(minutes=woken_minutes_ago, seconds=count - n),
        )
        for n in range(count)
    )


def test_the_oldest_lost_wake_up_is_sent_first_whatever_the_backlog() -> None:
    jobs = queued_jobs(2000, woken_minutes_ago=10)
    oldest = jobs[0]
    with with_modalkit(WORKER={"SWEEP_LIMIT": 500}):
        woken = flow.sweep().jobs_to_wake
    assert len(woken) == 500
    assert woken[0] == oldest.id
    assert woken == [job.id for job in jobs[:500]]  # FIFO, not whatever the planner returns
    # A wake-up that could not be sent at all goes before any of them.
    failed = jobs[-1]
    Job.objects.mark_unwoken([failed.id])
    with with_modalkit(WORKER={"SWEEP_LIMIT": 500}):
        assert flow.sweep().jobs_to_wake[0] == failed.id


@pytest.fixture
def five_second_sweeps() -> Iterator[None]:
    """The shipped sweep period: 5 s, so a sweep may be taken again 4 s after the last."""
    with with_modalkit(WORKER={"SWEEP_INTERVAL_SECONDS": 5}):
        yield


def a_period_passes() -> None:
    SweepState.objects.update(started_at=timezone.now() - dt.timedelta(seconds=5))


@pytest.mark.usefixtures("five_second_sweeps")
def test_one_sweep_per_period_whoever_asks() -> None:
    assert sweeper.sweep(worker="a", broker_epoch=None) is not None
    # Another process (or the same one) a moment later: this period's sweep is taken.
    assert sweeper.sweep(worker="b", broker_epoch=None) is None
    assert sweeper.sweep(worker="a", broker_epoch=None) is None
    a_period_passes()
    assert sweeper.sweep(worker="b", broker_epoch=None) is not None
    state = SweepState.objects.get()
    assert (state.worker, state.sweeps) == ("b", 2)
    assert state.last_result["woken"] == 0


@pytest.mark.usefixtures("five_second_sweeps")
def test_a_sweep_that_died_does_not_block_the_next_forever() -> None:
    assert sweeper.sweep(worker="a", broker_epoch=None) is not None
    # "a" took the next period's sweep, then died before finishing it.
    lease = get_settings().worker.lease_seconds
    SweepState.objects.update(started_at=timezone.now() - dt.timedelta(seconds=lease - 5), finished_at=None)
    assert sweeper.sweep(worker="b", broker_epoch=None) is None
    SweepState.objects.update(started_at=timezone.now() - dt.timedelta(seconds=lease + 1))
    assert sweeper.sweep(worker="b", broker_epoch=None) is not None


@pytest.mark.usefixtures("five_second_sweeps")
def test_when_the_broker_loses_its_messages_every_queued_job_is_woken_again() -> None:
    SweepState.objects.all().delete()
    assert sweeper.sweep(worker="a", broker_epoch="first") is not None  # the epoch is recorded
    recent = queued_jobs(3, woken_minutes_ago=0)  # wake-ups sent just now: normally left alone
    a_period_passes()
    assert sweeper.sweep(worker="a", broker_epoch="first").jobs_to_wake == []
    a_period_passes()
    # Redis restarted empty: a new epoch. Every job queued before it gets a new wake-up.
    assert sorted(sweeper.sweep(worker="a", broker_epoch="second").jobs_to_wake) == sorted(j.id for j in recent)
    a_period_passes()
    assert sweeper.sweep(worker="a", broker_epoch="second").jobs_to_wake == []


def finished_jobs(count: int, *, days_ago: int) -> list[Job]:
    jobs = [claim_one(submit(success_queue="q")) for _ in range(count)]
    for delivery in flow.finish([(job, OUTPUT) for job in jobs]):
        flow.record([SendResult(delivery, external_id="x")])
    Job.objects.update(finished_at=timezone.now() - dt.timedelta(days=days_ago))
    return jobs


def test_the_purge_reads_ids_only_and_goes_in_chunks() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    finished_jobs(7, days_ago=30)
    with with_modalkit(WORKER={"SWEEP_LIMIT": 3}), CaptureQueriesContext(connection) as queries:
        assert flow.sweep().purged == 7  # three chunks: 3 + 3 + 1
    assert not Job.objects.exists()
    assert not QueueDelivery.objects.exists()
    purge = [
        query["sql"]
        for query in queries.captured_queries
        if query["sql"].startswith("DELETE") or 'ORDER BY "modalkit_django_job"."finished_at"' in query["sql"]
    ]
    assert len([sql for sql in purge if sql.startswith('DELETE FROM "modalkit_django_job"')]) == 3
    assert not [sql for sql in purge if '"message"' in sql or '"result"' in sql]


@pytest.mark.django_db(transaction=True)
def test_a_job_rerun_while_the_purge_runs_survives() -> None:
    import threading

    [job] = finished_jobs(1, days_ago=30)
    locked, release = threading.Event(), threading.Event()

    def operator_reruns() -> None:
        from django.db import connection, transaction

        try:
            with transaction.atomic():
                # The re-run holds the row, as a slow admin request would.
                Job.objects.select_for_update().get(id=job.id)
                locked.set()
                release.wait(10)
                modalkit_django.rerun_job(job=job)
        finally:
            connection.close()

    rerun = threading.Thread(target=operator_reruns)
    rerun.start()
    assert locked.wait(10)
    purged = flow.sweep().purged  # skips the locked row instead of waiting for it, or deleting it
    release.set()
    rerun.join(10)
    assert purged == 0
    assert Job.objects.get(id=job.id).status == Job.Status.QUEUED
    # Finished again and old again, it goes with the next purge.
    Job.objects.filter(id=job.id).update(status=Job.Status.SUCCEEDED, finished_at=timezone.now() - dt.timedelta(days=9))
    assert flow.sweep().purged == 1
