"""Services: the job and delivery state machine, batch by batch, and the sweep."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from modalkit_django import services
from modalkit_django.exceptions import (
    DeliveryError,
    InferenceUnavailable,
    InvalidJobState,
    JobNotFound,
    PermanentDeliveryError,
    PipelineError,
)
from modalkit_django.models import Job, QueueDelivery

pytestmark = pytest.mark.django_db

OUTPUT = {"status": "success", "sentiment": "positive", "confidence": 0.9}


def submit(**kwargs: Any) -> Job:
    return services.submit_job(message={"text": "good"}, **kwargs)


def claim_one(job: Job) -> Job:
    [claimed] = services.claim_jobs(job_ids=[job.id])
    return claimed


def with_modalkit(**changes: Any) -> Any:
    merged = {**settings.MODALKIT}
    for key, value in changes.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return override_settings(MODALKIT=merged)


# --- submit, get ---------------------------------------------------------------------


def test_submit_wakes_a_worker_only_on_commit(django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        job = submit(success_queue="q", meta={"a": 1})
    assert job.status == Job.Status.QUEUED
    assert job.model_name == "sentiment"
    assert job.enqueued_at == job.created_at
    assert len(callbacks) == 1


def test_get_job_is_scoped_to_its_owner(user: Any, other_user: Any) -> None:
    job = submit(owner=user)
    assert services.get_job(job_id=job.id, owner=user) == job
    with pytest.raises(JobNotFound):
        services.get_job(job_id=job.id, owner=other_user)
    with pytest.raises(JobNotFound):
        services.get_job(job_id=job.id, owner=None)


# --- claim -------------------------------------------------------------------------


def test_claim_takes_a_job_once() -> None:
    job = submit()
    claimed = claim_one(job)
    assert claimed.status == Job.Status.RUNNING
    assert claimed.attempts == 1
    assert claimed.lease_token is not None
    job.refresh_from_db()
    assert (job.status, job.attempts, job.lease_token) == ("running", 1, claimed.lease_token)
    assert job.lease_expires_at > timezone.now()
    # A duplicate message finds nothing to claim.
    assert services.claim_jobs(job_ids=[job.id]) == []


def test_claim_skips_jobs_not_yet_due() -> None:
    job = submit()
    Job.objects.filter(id=job.id).update(run_after=timezone.now() + dt.timedelta(minutes=1))
    assert services.claim_jobs(job_ids=[job.id]) == []


def test_claim_takes_a_whole_batch() -> None:
    jobs = [submit() for _ in range(5)]
    claimed = services.claim_jobs(job_ids=[job.id for job in jobs])
    assert {job.id for job in claimed} == {job.id for job in jobs}
    assert len({job.lease_token for job in claimed}) == 1


# --- finish ------------------------------------------------------------------------


def test_finish_success_stores_the_result_and_a_success_delivery() -> None:
    job = claim_one(submit(success_queue="ok", failure_queue="err", meta={"r": 1}))
    [delivery] = services.finish_jobs(results=[(job, OUTPUT)])
    job.refresh_from_db()
    assert (job.status, job.result, job.error, job.lease_token) == ("succeeded", OUTPUT, None, None)
    assert job.finished_at is not None
    assert (delivery.route, delivery.queue_name, delivery.backend, delivery.status) == (
        "success",
        "ok",
        "memory",
        "pending",
    )
    assert delivery.message_id == f"{job.id}:success"
    assert delivery.payload == {
        **OUTPUT,
        "job_id": str(job.id),
        "model_name": "sentiment",
        "meta": {"r": 1},
        "timestamp": delivery.payload["timestamp"],
    }
    # The sweep leaves it to the worker that is sending it now.
    assert delivery.next_attempt_at > timezone.now()


def test_finish_failure_delivers_the_error_and_the_original_request() -> None:
    job = claim_one(submit(success_queue="ok", failure_queue="err", meta={"r": 2}))
    [delivery] = services.finish_jobs(results=[(job, PipelineError("boom", error_type="ValueError"))])
    job.refresh_from_db()
    assert (job.status, job.result, job.error) == ("failed", None, {"type": "ValueError", "message": "boom"})
    assert (delivery.route, delivery.queue_name) == ("failure", "err")
    assert delivery.payload["status"] == "error"
    assert delivery.payload["error"] == "boom"
    assert delivery.payload["error_type"] == "ValueError"
    assert delivery.payload["original_message"] == {
        "message": {"text": "good"},
        "success_queue": "ok",
        "failure_queue": "err",
        "meta": {"r": 2},
    }


@pytest.mark.parametrize("prediction", [OUTPUT, PipelineError("boom")])
def test_no_queue_no_delivery(prediction: Any) -> None:
    job = claim_one(submit())
    assert services.finish_jobs(results=[(job, prediction)]) == []
    assert not QueueDelivery.objects.exists()
    job.refresh_from_db()
    assert job.is_finished


def test_transient_error_requeues_with_backoff_until_attempts_run_out() -> None:
    job = claim_one(submit(failure_queue="err"))
    assert services.finish_jobs(results=[(job, InferenceUnavailable("modal is down"))]) == []
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED
    assert job.error == {"type": "InferenceUnavailable", "message": "modal is down"}
    assert job.run_after > timezone.now()
    assert job.enqueued_at is None

    max_attempts = 3
    for _ in range(max_attempts - 1):
        Job.objects.filter(id=job.id).update(run_after=None)
        job = claim_one(job)
        deliveries = services.finish_jobs(results=[(job, InferenceUnavailable("modal is down"))])
    job.refresh_from_db()
    assert job.attempts == max_attempts
    assert job.status == Job.Status.FAILED
    assert [delivery.route for delivery in deliveries] == ["failure"]


def test_a_run_whose_lease_was_reclaimed_does_not_finish_the_job() -> None:
    job = claim_one(submit(success_queue="q"))
    # The sweep reclaimed it and another worker claimed it again.
    Job.objects.filter(id=job.id).update(status=Job.Status.QUEUED, lease_token=None)
    second = claim_one(job)
    assert services.finish_jobs(results=[(job, OUTPUT)]) == []
    second.refresh_from_db()
    assert second.status == Job.Status.RUNNING
    assert services.finish_jobs(results=[(second, OUTPUT)])[0].route == "success"


# --- sends ---------------------------------------------------------------------------


def pending_delivery(**submit_kwargs: Any) -> QueueDelivery:
    job = claim_one(submit(success_queue="q", **submit_kwargs))
    [delivery] = services.finish_jobs(results=[(job, OUTPUT)])
    return delivery


def test_record_a_send() -> None:
    delivery = pending_delivery()
    services.record_sends(results=[services.SendResult(delivery, external_id="msg-1")])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.external_id) == ("sent", 1, "msg-1")
    assert delivery.sent_at is not None
    assert delivery.next_attempt_at is None


def test_failed_send_retries_with_exponential_backoff_and_jitter() -> None:
    delivery = pending_delivery()
    policy = settings.MODALKIT.get("DELIVERY", {})
    base = policy.get("BACKOFF_SECONDS", 2.0)
    for attempt in (1, 2, 3):
        before = timezone.now()
        services.record_sends(results=[services.SendResult(delivery, error=DeliveryError("down"))])
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts) == ("retrying", attempt)
        assert delivery.last_error == "DeliveryError: down"
        delay = (delivery.next_attempt_at - before).total_seconds()
        assert base * 2 ** (attempt - 1) * 0.5 - 0.1 <= delay <= base * 2 ** (attempt - 1) + 0.1


def test_delivery_is_dead_after_max_attempts() -> None:
    delivery = pending_delivery()
    with with_modalkit(DELIVERY={"MAX_ATTEMPTS": 2}):
        for _ in range(2):
            services.record_sends(results=[services.SendResult(delivery, error=DeliveryError("down"))])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("dead", 2, None)


def test_permanent_error_is_dead_at_once() -> None:
    delivery = pending_delivery()
    services.record_sends(results=[services.SendResult(delivery, error=PermanentDeliveryError("410 Gone"))])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("dead", 1)


def test_delivery_older_than_max_age_is_dead() -> None:
    delivery = pending_delivery()
    QueueDelivery.objects.filter(id=delivery.id).update(attempts_since=timezone.now() - dt.timedelta(days=2))
    delivery.refresh_from_db()
    services.record_sends(results=[services.SendResult(delivery, error=DeliveryError("down"))])
    delivery.refresh_from_db()
    assert delivery.status == "dead"


def test_unsent_delivery_ignores_sent_and_dead_ones() -> None:
    delivery = pending_delivery()
    assert services.unsent_delivery(delivery_id=delivery.id) == delivery
    services.record_sends(results=[services.SendResult(delivery, external_id="x")])
    assert services.unsent_delivery(delivery_id=delivery.id) is None


# --- operator actions ----------------------------------------------------------------


def test_cancel_only_queued_jobs(django_capture_on_commit_callbacks: Any) -> None:
    job = submit(failure_queue="err")
    with django_capture_on_commit_callbacks() as callbacks:
        services.cancel_job(job=job)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELED
    [delivery] = job.deliveries.all()
    assert delivery.payload["error_type"] == "Canceled"
    assert len(callbacks) == 1  # the failure notice goes out at once, with this wake-up
    assert delivery.next_attempt_at > timezone.now()  # so the sweep leaves it alone
    with pytest.raises(InvalidJobState, match="it is canceled"):
        services.cancel_job(job=job)


def test_rerun_runs_a_finished_job_again_with_new_message_ids(django_capture_on_commit_callbacks: Any) -> None:
    job = claim_one(submit(success_queue="q"))
    [first] = services.finish_jobs(results=[(job, OUTPUT)])
    with django_capture_on_commit_callbacks() as callbacks:
        rerun = services.rerun_job(job=job)
    assert (rerun.status, rerun.reruns, rerun.attempts, rerun.result) == ("queued", 1, 0, None)
    assert len(callbacks) == 1
    [second] = services.finish_jobs(results=[(claim_one(rerun), OUTPUT)])
    assert second.message_id == f"{job.id}:success:rerun1"
    assert first.message_id != second.message_id
    assert QueueDelivery.objects.filter(job=job).count() == 2


def test_rerun_refuses_unfinished_jobs() -> None:
    with pytest.raises(InvalidJobState, match="it is queued"):
        services.rerun_job(job=submit())


def test_redeliver_resets_a_dead_delivery(django_capture_on_commit_callbacks: Any) -> None:
    delivery = pending_delivery()
    services.record_sends(results=[services.SendResult(delivery, error=PermanentDeliveryError("no"))])
    with django_capture_on_commit_callbacks() as callbacks:
        services.redeliver(delivery=delivery)
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    assert delivery.last_error  # kept for the record until the next attempt
    assert len(callbacks) == 1


# --- sweep ---------------------------------------------------------------------------


def test_sweep_reclaims_a_job_whose_worker_died_and_wakes_it() -> None:
    job = claim_one(submit())
    Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    result = services.sweep()
    assert result.reclaimed == 1
    assert result.jobs_to_wake == [job.id]
    job.refresh_from_db()
    assert (job.status, job.attempts, job.lease_token) == ("queued", 1, None)
    assert job.error["type"] == "WorkerLost"


def test_sweep_fails_a_job_that_lost_its_worker_too_often() -> None:
    job = claim_one(submit(failure_queue="err"))
    Job.objects.filter(id=job.id).update(attempts=3, lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    result = services.sweep()
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert result.jobs_to_wake == []
    [delivery] = job.deliveries.all()
    assert delivery.payload["error_type"] == "WorkerLost"
    assert result.deliveries_to_send == [delivery.id]


def test_sweep_rewakes_a_job_whose_message_was_lost() -> None:
    job = submit()
    assert services.sweep().jobs_to_wake == []
    Job.objects.filter(id=job.id).update(enqueued_at=timezone.now() - dt.timedelta(minutes=10))
    assert services.sweep().jobs_to_wake == [job.id]
    # Not again until another REQUEUE_AFTER_SECONDS has passed.
    assert services.sweep().jobs_to_wake == []


def test_sweep_wakes_a_retried_job_once_its_backoff_is_over() -> None:
    job = claim_one(submit())
    services.finish_jobs(results=[(job, InferenceUnavailable("down"))])
    assert services.sweep().jobs_to_wake == []
    Job.objects.filter(id=job.id).update(run_after=timezone.now() - dt.timedelta(seconds=1))
    assert services.sweep().jobs_to_wake == [job.id]


def test_sweep_expires_jobs_that_waited_too_long() -> None:
    job = submit(failure_queue="err")
    Job.objects.filter(id=job.id).update(queued_at=timezone.now() - dt.timedelta(hours=2))
    result = services.sweep()
    job.refresh_from_db()
    assert result.expired == 1
    assert job.status == Job.Status.EXPIRED
    assert job.deliveries.get().payload["error_type"] == "Expired"


def test_sweep_hands_due_deliveries_to_the_delivery_task_once() -> None:
    delivery = pending_delivery()
    assert services.sweep().deliveries_to_send == []
    QueueDelivery.objects.filter(id=delivery.id).update(next_attempt_at=timezone.now())
    assert services.sweep().deliveries_to_send == [delivery.id]
    assert services.sweep().deliveries_to_send == []


def test_sweep_purges_finished_jobs_past_their_ttl() -> None:
    old = claim_one(submit(success_queue="q"))
    [delivery] = services.finish_jobs(results=[(old, OUTPUT)])
    services.record_sends(results=[services.SendResult(delivery, external_id="x")])
    recent = submit()
    Job.objects.filter(id=old.id).update(finished_at=timezone.now() - dt.timedelta(days=30))
    assert services.sweep().purged == 1
    assert list(Job.objects.all()) == [recent]
    assert not QueueDelivery.objects.exists()


@pytest.mark.parametrize("owned", [True, False], ids=["api-key", "static-key"])
def test_a_concurrent_duplicate_idempotency_key_returns_the_winner(
    monkeypatch: pytest.MonkeyPatch, user: Any, owned: bool
) -> None:
    owner = user if owned else None
    winner = submit(idempotency_key="k", owner=owner)
    real_lookup = services._job_for_key
    lookups: list[Job | None] = []

    def first_misses(*args: Any) -> Job | None:
        # The first lookup misses, as it does when the winner has not committed yet;
        # only the unique constraint can then stop a second job.
        lookups.append(real_lookup(*args) if lookups else None)
        return lookups[-1]

    monkeypatch.setattr(services, "_job_for_key", first_misses)
    replay = submit(idempotency_key="k", owner=owner)
    assert len(lookups) == 2  # the insert failed and the second lookup found the winner
    assert (replay.id, replay.replayed) == (winner.id, True)
    assert Job.objects.count() == 1


# --- what the review of the first cut found -----------------------------------------------


def test_an_output_the_database_refuses_fails_only_its_own_job() -> None:
    jobs = services.claim_jobs(job_ids=[submit(failure_queue="e").id for _ in range(3)])
    outputs = [OUTPUT, {**OUTPUT, "note": "a\x00b"}, {**OUTPUT, "confidence": float("nan")}]
    services.finish_jobs(results=list(zip(jobs, outputs, strict=True)))
    statuses = [Job.objects.get(id=job.id) for job in jobs]
    assert [job.status for job in statuses] == ["succeeded", "failed", "failed"]
    assert statuses[1].error["message"] == "The model's output cannot be stored: it contains a NUL character (\\u0000)"
    assert "nan" in statuses[2].error["message"]


def test_an_error_message_with_a_nul_is_stored() -> None:
    [job] = services.claim_jobs(job_ids=[submit().id])
    services.finish_jobs(results=[(job, PipelineError("bad\x00byte", error_type="ValueError"))])
    job.refresh_from_db()
    assert job.error == {"type": "ValueError", "message": "bad\\x00byte"}


def test_a_rerun_of_an_old_job_is_not_expired() -> None:
    job = claim_one(submit())
    services.finish_jobs(results=[(job, OUTPUT)])
    Job.objects.filter(id=job.id).update(
        created_at=timezone.now() - dt.timedelta(days=3), queued_at=timezone.now() - dt.timedelta(days=3)
    )
    services.rerun_job(job=job)
    assert services.sweep().expired == 0
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED


def test_the_purge_keeps_results_still_being_delivered() -> None:
    delivery = pending_delivery()
    services.record_sends(results=[services.SendResult(delivery, error=DeliveryError("down"))])
    Job.objects.filter(id=delivery.job_id).update(finished_at=timezone.now() - dt.timedelta(days=30))
    assert services.sweep().purged == 0
    assert QueueDelivery.objects.filter(id=delivery.id, status="retrying").exists()
    services.record_sends(results=[services.SendResult(QueueDelivery.objects.get(id=delivery.id), external_id="x")])
    assert services.sweep().purged == 1


def test_a_redelivery_gets_a_fresh_age_budget() -> None:
    delivery = pending_delivery()
    services.record_sends(results=[services.SendResult(delivery, error=PermanentDeliveryError("no"))])
    QueueDelivery.objects.filter(id=delivery.id).update(attempts_since=timezone.now() - dt.timedelta(days=2))
    services.redeliver(delivery=delivery)
    services.record_sends(results=[services.SendResult(delivery, error=DeliveryError("still down"))])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("retrying", 1)


def test_a_late_result_does_not_overwrite_a_delivery_recorded_meanwhile() -> None:
    delivery = pending_delivery()
    stale = QueueDelivery.objects.get(id=delivery.id)
    services.record_sends(results=[services.SendResult(delivery, external_id="sent-by-the-sweep")])
    services.record_sends(results=[services.SendResult(stale, error=DeliveryError("timed out"))])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.external_id) == ("sent", 1, "sent-by-the-sweep")


def test_a_late_result_does_not_undo_a_redelivery() -> None:
    delivery = pending_delivery()
    services.record_sends(results=[services.SendResult(delivery, error=DeliveryError("down"))])
    in_flight = QueueDelivery.objects.get(id=delivery.id)  # attempts=1, being retried
    services.redeliver(delivery=delivery)
    services.record_sends(results=[services.SendResult(in_flight, error=DeliveryError("down again"))])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 0)


def test_a_cancellation_notice_is_not_sent_twice_by_the_sweep() -> None:
    job = submit(failure_queue="e")
    services.cancel_job(job=job)  # its wake-up sends the notice
    assert services.sweep().deliveries_to_send == []
