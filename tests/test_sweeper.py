"""The sweep: lost workers, expiry, batches and the purge; and what workers claim themselves."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
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


def test_a_retried_job_is_claimed_once_its_backoff_is_over_not_before() -> None:
    job = claim_one(submit())
    flow.finish([(job, InferenceUnavailable("down"))])
    assert flow.claim([job.id]) == []
    Job.objects.filter(id=job.id).update(
        queued_at=timezone.now() - dt.timedelta(seconds=1), run_after=timezone.now() - dt.timedelta(seconds=1)
    )
    assert [claimed.id for claimed in flow.claim([job.id])] == [job.id]


def test_sweep_expires_jobs_that_waited_too_long() -> None:
    job = submit(failure_queue="err")
    Job.objects.filter(id=job.id).update(queued_at=timezone.now() - dt.timedelta(hours=2))
    result = flow.sweep()
    job.refresh_from_db()
    assert result.expired == 1
    assert job.status == Job.Status.EXPIRED
    assert job.deliveries.get().payload["error_type"] == "Expired"


def test_a_due_delivery_is_claimed_once_per_claim_window() -> None:
    delivery = pending_delivery()
    claim_due = QueueDelivery.objects.claim_due
    assert claim_due(claim_seconds=60, limit=10) == []  # its first attempt is its worker's
    QueueDelivery.objects.filter(id=delivery.id).update(next_attempt_at=timezone.now())
    assert [due.id for due in claim_due(claim_seconds=60, limit=10)] == [delivery.id]
    assert claim_due(claim_seconds=60, limit=10) == []  # left to that claimer for a minute


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


def test_a_cancellation_notice_is_due_at_once_for_the_delivery_loops() -> None:
    job = submit(failure_queue="e")
    modalkit_django.cancel_job(job=job)  # its wake-up sends a delivery loop after it
    (notice,) = QueueDelivery.objects.claim_due(claim_seconds=60, limit=10)
    assert (notice.job_id, notice.route) == (job.id, "failure")


# --- under load: oldest first, once per period, outages, the purge -------------------------


def queued_jobs(count: int, *, minutes_ago: float) -> list[Job]:
    """``count`` queued jobs, oldest first, due that long ago."""
    now = timezone.now()
    return Job.objects.bulk_create(
        Job(
            model_name="sentiment",
            message={"text": str(n)},
            created_at=now,
            queued_at=now - dt.timedelta(minutes=minutes_ago, seconds=count - n),
        )
        for n in range(count)
    )


def test_a_claim_takes_the_longest_due_first_whatever_the_backlog() -> None:
    jobs = queued_jobs(2000, minutes_ago=10)
    claimed = Job.objects.claim(limit=500, lease_seconds=30)
    assert sorted(job.queued_at for job in claimed) == [job.queued_at for job in jobs[:500]]


@pytest.fixture
def five_second_sweeps() -> Iterator[None]:
    """The shipped sweep period: 5 s, so a sweep may be taken again 4 s after the last."""
    with with_modalkit(WORKER={"SWEEP_INTERVAL_SECONDS": 5}):
        yield


def a_period_passes() -> None:
    SweepState.objects.update(started_at=timezone.now() - dt.timedelta(seconds=5))


@pytest.mark.usefixtures("five_second_sweeps")
def test_one_sweep_per_period_whoever_asks() -> None:
    assert sweeper.sweep(worker="a") is not None
    # Another process (or the same one) a moment later: this period's sweep is taken.
    assert sweeper.sweep(worker="b") is None
    assert sweeper.sweep(worker="a") is None
    a_period_passes()
    assert sweeper.sweep(worker="b") is not None
    state = SweepState.objects.get()
    assert (state.worker, state.sweeps) == ("b", 2)
    assert state.last_result["reclaimed"] == 0


@pytest.mark.usefixtures("five_second_sweeps")
def test_a_sweep_that_died_does_not_block_the_next_forever() -> None:
    assert sweeper.sweep(worker="a") is not None
    # "a" took the next period's sweep, then died before finishing it.
    lease = get_settings().worker.lease_seconds
    SweepState.objects.update(started_at=timezone.now() - dt.timedelta(seconds=lease - 5), finished_at=None)
    assert sweeper.sweep(worker="b") is None
    SweepState.objects.update(started_at=timezone.now() - dt.timedelta(seconds=lease + 1))
    assert sweeper.sweep(worker="b") is not None


@pytest.mark.usefixtures("five_second_sweeps")
def test_after_the_sweeps_stopped_no_lease_is_reclaimed_until_renewals_could_land(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database paused (or went away) longer than a lease: workers alive all along
    had their renewals held up too. The first sweeps after it leave expired leases alone
    for a heartbeat and a retry's backoff, so the job is not run twice."""
    caplog.set_level("INFO", logger="modalkit_django.worker.sweeper")
    job = claim_one(submit())
    assert sweeper.sweep(worker="a") is not None
    # 35 s of nothing: no sweep ran, and the lease (renewed just before) expired meanwhile.
    SweepState.objects.update(started_at=timezone.now() - dt.timedelta(seconds=35))
    Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - dt.timedelta(seconds=5))
    result = sweeper.sweep(worker="a")
    assert result is not None and result.quiet and result.reclaimed == 0
    a_period_passes()
    assert sweeper.sweep(worker="a").reclaimed == 0  # still within the quiet time
    said = [record for record in caplog.records if record.getMessage().startswith("No sweep ran for over")]
    assert [record.levelname for record in said] == ["INFO"]  # once, at its start: not an error
    # The worker's renewal landed: nothing to reclaim when the quiet time is over.
    Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() + dt.timedelta(seconds=30))
    SweepState.objects.update(quiet_until=timezone.now() - dt.timedelta(seconds=1))
    a_period_passes()
    result = sweeper.sweep(worker="a")
    assert not result.quiet and result.reclaimed == 0
    # A worker really dead: reclaimed by the first sweep after the quiet time.
    Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    a_period_passes()
    assert sweeper.sweep(worker="a").reclaimed == 1


def finished_jobs(count: int, *, days_ago: int) -> list[Job]:
    jobs = [claim_one(submit(success_queue="q")) for _ in range(count)]
    for delivery in flow.finish([(job, OUTPUT) for job in jobs]):
        flow.record([SendResult(delivery, external_id="x")])
    Job.objects.update(finished_at=timezone.now() - dt.timedelta(days=days_ago))
    return jobs


def test_the_purge_reads_ids_only_and_goes_in_chunks() -> None:

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

    [job] = finished_jobs(1, days_ago=30)
    locked, release = threading.Event(), threading.Event()

    def operator_reruns() -> None:

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


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("recording_waker")  # no embedded worker: these rows are the test's
def test_a_purge_never_deletes_a_delivery_redelivered_a_moment_before() -> None:
    """Purge locks jobs and deletes them with their deliveries; a redelivery locks the job
    too, so each waits for the other: never a delivery made pending, then deleted."""

    delivery = pending_delivery()
    flow.record([SendResult(delivery, external_id="x")])  # sent: its job may be purged
    Job.objects.filter(id=delivery.job_id).update(finished_at=timezone.now() - dt.timedelta(days=30))
    redelivering, purged = threading.Event(), threading.Event()

    def redeliver_and_hold() -> None:
        try:
            with transaction.atomic():
                QueueDelivery.objects.filter(id=delivery.id).redeliver()
                redelivering.set()
                purged.wait(5)  # the purge runs meanwhile, from another connection
        finally:
            connection.close()

    thread = threading.Thread(target=redeliver_and_hold)
    thread.start()
    assert redelivering.wait(5)
    assert Job.objects.purge_finished(older_than=86400, limit=10) == 0  # the job is locked: left alone
    purged.set()
    thread.join(10)
    assert Job.objects.purge_finished(older_than=86400, limit=10) == 0  # its delivery is due again
    assert QueueDelivery.objects.get(id=delivery.id).status == "pending"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("recording_waker")
def test_a_redelivery_waits_for_a_purge_that_has_the_job_and_then_finds_nothing() -> None:

    delivery = pending_delivery()
    flow.record([SendResult(delivery, external_id="x")])
    locked = threading.Event()

    def purge_slowly() -> None:  # as purge_finished does: lock the job, then delete it with its deliveries
        try:
            with transaction.atomic():
                list(Job.objects.filter(id=delivery.job_id).select_for_update().values_list("id"))
                locked.set()
                time.sleep(0.5)
                Job.objects.filter(id=delivery.job_id).delete()
        finally:
            connection.close()

    thread = threading.Thread(target=purge_slowly)
    thread.start()
    assert locked.wait(5)
    started = time.monotonic()
    assert modalkit_django.redeliver_deliveries(QueueDelivery.objects.filter(id=delivery.id)) == 0
    assert time.monotonic() - started > 0.3  # it waited for the purge, then found the row gone
    thread.join(10)
    assert not QueueDelivery.objects.exists()
