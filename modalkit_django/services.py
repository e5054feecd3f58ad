"""Everything that changes a job or a delivery. Views, admin actions, tasks and
commands call these functions; none of them writes the models directly.

All functions are synchronous and keyword-only. The worker's hot path
(:func:`claim_jobs`, :func:`finish_jobs`, :func:`record_sends`) works on whole
batches, a few statements per batch whatever its size.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from .conf import DeliverySettings, get_config, get_settings, resolve_model
from .exceptions import (
    IdempotencyConflict,
    InferenceError,
    InvalidJobState,
    JobNotFound,
    PermanentDeliveryError,
    PipelineError,
)
from .inference.backends import Prediction
from .models import ApiKey, Job, QueueDelivery, json_storage_problem
from .queues import QueueMessage, queues

__all__ = [
    "SendResult",
    "SweepResult",
    "authenticate_api_key",
    "cancel_job",
    "claim_jobs",
    "create_api_key",
    "finish_jobs",
    "get_job",
    "list_jobs",
    "record_sends",
    "redeliver",
    "rerun_job",
    "submit_job",
    "sweep",
    "unsent_delivery",
]

logger = logging.getLogger(__name__)


# --- API keys ----------------------------------------------------------------------


def create_api_key(*, owner: Any, name: str) -> tuple[ApiKey, str]:
    """Create a key for ``owner``; returns the row and the raw key (shown once)."""
    api_key = ApiKey(owner=owner, name=name)
    raw_key = api_key.set_new_key()
    api_key.save()
    return api_key, raw_key


def authenticate_api_key(*, raw_key: str) -> ApiKey | None:
    return (
        ApiKey.objects.select_related("owner")
        .filter(digest=ApiKey.digest_of(raw_key), revoked_at__isnull=True, owner__is_active=True)
        .first()
    )


# --- Submitting and managing jobs ----------------------------------------------------


def submit_job(
    *,
    message: dict[str, Any],
    model_name: str | None = None,
    success_queue: str = "",
    failure_queue: str = "",
    meta: dict[str, Any] | None = None,
    owner: Any = None,
    idempotency_key: str | None = None,
) -> Job:
    """Store a queued job; a worker is woken once the transaction commits.

    With an ``idempotency_key`` the owner already used for the same request, the
    job from then is returned (``job.replayed`` is True) and nothing new is queued;
    with another request, :class:`IdempotencyConflict`.
    """
    model_name = resolve_model(model_name)
    meta = meta or {}
    fingerprint = _fingerprint(model_name, message, success_queue, failure_queue, meta) if idempotency_key else ""
    if idempotency_key and (existing := _job_for_key(owner, idempotency_key, fingerprint)):
        return existing
    now = timezone.now()
    try:
        with transaction.atomic():
            job = Job.objects.create(
                model_name=model_name,
                message=message,
                success_queue=success_queue,
                failure_queue=failure_queue,
                meta=meta,
                owner=owner,
                created_at=now,
                queued_at=now,
                enqueued_at=now,
                idempotency_key=idempotency_key or "",
                request_fingerprint=fingerprint,
            )
    except IntegrityError:
        # The same key, submitted concurrently, won the race.
        replay = _job_for_key(owner, idempotency_key, fingerprint) if idempotency_key else None
        if replay is None:
            raise
        return replay
    transaction.on_commit(partial(_wake_job, job.id), robust=True)
    return job


def _fingerprint(model_name: str, *request: Any) -> str:
    canonical = json.dumps([model_name, *request], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _job_for_key(owner: Any, key: str, fingerprint: str) -> Job | None:
    job = Job.objects.for_owner(owner).filter(idempotency_key=key).first()
    if job is None:
        return None
    if job.request_fingerprint != fingerprint:
        raise IdempotencyConflict(key, job.id)
    job.replayed = True
    return job


def get_job(*, job_id: uuid.UUID | str, owner: Any) -> Job:
    """The caller's job with its deliveries; :class:`JobNotFound` for anyone else's."""
    try:
        return Job.objects.for_owner(owner).prefetch_related("deliveries").get(id=job_id)
    except (Job.DoesNotExist, ValidationError) as exc:
        raise JobNotFound(job_id) from exc


def list_jobs(
    *,
    owner: Any,
    status: str | None = None,
    model_name: str | None = None,
    limit: int = 20,
    before: uuid.UUID | str | None = None,
) -> tuple[list[Job], Job | None]:
    """The owner's jobs, newest first, ``limit`` at a time, after the job ``before``.

    Returns the page and the job to pass as ``before`` for the next one (or ``None``).
    """
    jobs = Job.objects.for_owner(owner).prefetch_related("deliveries").order_by("-created_at", "-id")
    if status:
        jobs = jobs.filter(status=status)
    if model_name:
        jobs = jobs.filter(model_name=model_name)
    if before is not None:
        cursor = get_job(job_id=before, owner=owner)
        jobs = jobs.filter(Q(created_at__lt=cursor.created_at) | Q(created_at=cursor.created_at, id__lt=cursor.id))
    page = list(jobs[: limit + 1])
    return page[:limit], (page[limit - 1] if len(page) > limit else None)


def cancel_job(*, job: Job) -> Job:
    """Cancel a queued job; its failure queue hears about it."""
    now = timezone.now()
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(id=job.id)
        if locked.status != Job.Status.QUEUED:
            raise InvalidJobState(job.id, locked.status, "cancel")
        error = {"type": "Canceled", "message": "The job was canceled before it ran."}
        _finish(locked, Job.Status.CANCELED, now, error=error)
        locked.save(update_fields=_OUTCOME_FIELDS)
        # Sent by the wake-up below; the sweep steps in only if that never happens.
        deliveries = _deliveries_for(locked, now)
        QueueDelivery.objects.bulk_create(deliveries)
        for delivery in deliveries:
            transaction.on_commit(partial(_wake_delivery, delivery.id), robust=True)
    return locked


def rerun_job(*, job: Job) -> Job:
    """Run a finished job's inference again, as a new generation with fresh deliveries."""
    now = timezone.now()
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(id=job.id)
        if not locked.is_finished:
            raise InvalidJobState(job.id, locked.status, "re-run")
        locked.status = Job.Status.QUEUED
        locked.reruns = F("reruns") + 1
        locked.attempts = 0
        locked.result = locked.error = None
        locked.started_at = locked.finished_at = locked.run_after = None
        locked.lease_token = locked.lease_expires_at = None
        locked.queued_at = locked.enqueued_at = now
        locked.save()
        transaction.on_commit(partial(_wake_job, locked.id), robust=True)
    locked.refresh_from_db()
    return locked


def redeliver(*, delivery: QueueDelivery) -> QueueDelivery:
    """Send a delivery's stored payload again, whatever its status, with a fresh attempt budget."""
    now = timezone.now()
    with transaction.atomic():
        updated = QueueDelivery.objects.filter(id=delivery.id).update(
            status=QueueDelivery.Status.PENDING,
            attempts=0,
            attempts_since=now,
            # Sent by the wake-up below; the sweep steps in only if that never happens.
            next_attempt_at=now + dt.timedelta(seconds=get_settings().delivery.claim_seconds),
        )
        if updated:
            transaction.on_commit(partial(_wake_delivery, delivery.id), robust=True)
    delivery.refresh_from_db()
    return delivery


def _wake_job(job_id: uuid.UUID) -> None:
    from . import broker, tasks

    broker.kick(tasks.run_job, str(job_id))


def _wake_delivery(delivery_id: uuid.UUID) -> None:
    from . import broker, tasks

    broker.kick(tasks.deliver, str(delivery_id))


# --- The worker's batch path ---------------------------------------------------------

# What finishing or requeueing a job writes.
_OUTCOME_FIELDS = [
    "status", "result", "error", "finished_at", "run_after", "enqueued_at", "lease_token", "lease_expires_at",
]  # fmt: skip
_SEND_FIELDS = ["status", "attempts", "sent_at", "external_id", "next_attempt_at", "last_error"]


def _save_rows(model: type[Job] | type[QueueDelivery], rows: Sequence[Any], fields: list[str]) -> None:
    """Write ``fields`` of existing ``rows`` in one statement.

    An upsert (``INSERT … ON CONFLICT (id) DO UPDATE``) is Django's cheapest multi-row
    update: ``bulk_update`` builds a ``CASE`` per field per row and measured 7 times slower
    for a batch of 100 jobs. Callers lock the rows first, so none is inserted anew.
    """
    if rows:
        model._default_manager.bulk_create(rows, update_conflicts=True, unique_fields=["id"], update_fields=fields)


def claim_jobs(*, job_ids: Sequence[uuid.UUID | str]) -> list[Job]:
    """Mark the runnable ones among ``job_ids`` running under a new lease; return them.

    A job already claimed, finished or not yet due is skipped, so a duplicate
    message does nothing.
    """
    now = timezone.now()
    lease_token = uuid.uuid4()
    lease_expires_at = now + dt.timedelta(seconds=get_settings().worker.lease_seconds)
    with transaction.atomic():
        jobs = list(Job.objects.runnable(now).filter(id__in=job_ids).select_for_update(skip_locked=True))
        if not jobs:
            return []
        Job.objects.filter(id__in=[job.id for job in jobs]).update(
            status=Job.Status.RUNNING,
            started_at=now,
            attempts=F("attempts") + 1,
            lease_token=lease_token,
            lease_expires_at=lease_expires_at,
        )
    for job in jobs:
        job.status = Job.Status.RUNNING
        job.started_at = now
        job.attempts += 1
        job.lease_token = lease_token
        job.lease_expires_at = lease_expires_at
    return jobs


def finish_jobs(*, results: Sequence[tuple[Job, Prediction]]) -> list[QueueDelivery]:
    """Store each claimed job's output or error and its queue delivery, in one transaction.

    A transient error sends the job back to the queue with backoff until it has
    used ``WORKER["MAX_ATTEMPTS"]``. A job whose lease was reclaimed meanwhile
    belongs to another run and is left alone. Returns the new deliveries, which
    the caller attempts once the transaction has committed.
    """
    now = timezone.now()
    worker = get_settings().worker
    finished: list[Job] = []
    requeued: list[Job] = []
    deliveries: list[QueueDelivery] = []
    with transaction.atomic():
        held = set(
            Job.objects.select_for_update()
            .filter(
                id__in=[job.id for job, _ in results],
                status=Job.Status.RUNNING,
                lease_token__in={job.lease_token for job, _ in results},
            )
            .values_list("id", flat=True)
        )
        for job, prediction in results:
            if job.id not in held:
                logger.warning("Job %s was reclaimed before it finished; dropping this run's result", job.id)
                continue
            if not isinstance(prediction, InferenceError) and (problem := json_storage_problem(prediction)):
                # One output the database refuses must not fail its whole batch.
                prediction = PipelineError(f"The model's output cannot be stored: it contains {problem}")
            if isinstance(prediction, InferenceError) and prediction.retryable and job.attempts < worker.max_attempts:
                _requeue(job, now, prediction.as_dict(), delay=worker.retry_backoff_seconds * 2 ** (job.attempts - 1))
                requeued.append(job)
                continue
            if isinstance(prediction, InferenceError):
                _finish(job, Job.Status.FAILED, now, error=prediction.as_dict())
            else:
                _finish(job, Job.Status.SUCCEEDED, now, result=prediction)
            finished.append(job)
            deliveries.extend(_deliveries_for(job, now))
        _save_rows(Job, finished + requeued, _OUTCOME_FIELDS)
        QueueDelivery.objects.bulk_create(deliveries)
    return deliveries


def _finish(
    job: Job,
    status: str,
    now: dt.datetime,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, str] | None = None,
) -> None:
    job.status = status
    job.result = result
    job.error = error
    job.finished_at = now
    job.lease_token = job.lease_expires_at = None


def _requeue(job: Job, now: dt.datetime, error: dict[str, str], *, delay: float) -> None:
    job.status = Job.Status.QUEUED
    job.error = error
    job.run_after = now + dt.timedelta(seconds=delay)
    # No wake-up is in flight: the sweep sends one once run_after has passed.
    job.enqueued_at = None
    job.lease_token = job.lease_expires_at = None


def _deliveries_for(job: Job, now: dt.datetime, *, due_now: bool = False) -> list[QueueDelivery]:
    """The delivery for a finished job: on its success or failure route, if it named a queue."""
    succeeded = job.status == Job.Status.SUCCEEDED
    route = QueueDelivery.Route.SUCCESS if succeeded else QueueDelivery.Route.FAILURE
    queue_name = job.success_queue if succeeded else job.failure_queue
    if not queue_name:
        return []
    message_id = f"{job.id}:{route}" + (f":rerun{job.reruns}" if job.reruns else "")
    # The worker attempts it inline at once; the sweep steps in only if that never happens.
    claim = dt.timedelta(seconds=0 if due_now else get_settings().delivery.claim_seconds)
    return [
        QueueDelivery(
            job=job,
            route=route,
            queue_name=queue_name,
            backend=queues.route(queue_name),
            message_id=message_id,
            payload=queue_payload(job, now),
            next_attempt_at=now + claim,
            created_at=now,
            attempts_since=now,
        )
    ]


def queue_payload(job: Job, now: dt.datetime) -> dict[str, Any]:
    """What lands on the queue: ModalKit's output message plus ``job_id`` and a timestamp.

    A failure also carries the original request, as ModalKit's
    ``DelayedFailureOutputModel`` does, so the consumer can resubmit it.
    """
    common = {
        "job_id": str(job.id),
        "model_name": job.model_name,
        "meta": job.meta,
        "timestamp": now.isoformat(),
    }
    if job.status == Job.Status.SUCCEEDED:
        return {**(job.result or {}), "status": "success", **common}
    error = job.error or {}
    return {
        "status": "error",
        "error": error.get("message", ""),
        "error_type": error.get("type", ""),
        **common,
        "original_message": job.request(),
    }


@dataclass(frozen=True)
class SendResult:
    """What happened to one attempt to send a delivery."""

    delivery: QueueDelivery
    external_id: str | None = None
    error: BaseException | None = None


def message_for(delivery: QueueDelivery) -> QueueMessage:
    return QueueMessage(
        message_id=delivery.message_id,
        queue_name=delivery.queue_name,
        route=delivery.route,
        job_id=str(delivery.job_id),
        payload=delivery.payload,
    )


def unsent_delivery(*, delivery_id: uuid.UUID | str) -> QueueDelivery | None:
    """The delivery if it still needs sending (a retry, a redelivery), else ``None``."""
    return QueueDelivery.objects.filter(id=delivery_id, status__in=QueueDelivery.UNSENT).first()


def record_sends(*, results: Iterable[SendResult]) -> None:
    """Record a batch of send attempts: sent, retrying with backoff, or dead.

    A delivery recorded or redelivered by someone else since this attempt began
    (it is no longer unsent, or its attempt count moved) keeps what they wrote.
    """
    now = timezone.now()
    policy = get_settings().delivery
    attempted = {result.delivery.id: result for result in results}
    with transaction.atomic():
        current = dict(
            QueueDelivery.objects.select_for_update()
            .filter(id__in=list(attempted), status__in=QueueDelivery.UNSENT)
            .values_list("id", "attempts")
        )
        updated = [
            _record(result, now, policy)
            for delivery_id, result in attempted.items()
            if current.get(delivery_id) == result.delivery.attempts
        ]
        _save_rows(QueueDelivery, updated, _SEND_FIELDS)


def _record(result: SendResult, now: dt.datetime, policy: DeliverySettings) -> QueueDelivery:
    delivery = result.delivery
    delivery.attempts += 1
    if result.error is None:
        delivery.status = QueueDelivery.Status.SENT
        delivery.sent_at = now
        delivery.external_id = result.external_id or ""
        delivery.next_attempt_at = None
        return delivery
    delivery.last_error = f"{type(result.error).__name__}: {result.error}"[:2000]
    delay = min(policy.max_backoff_seconds, policy.backoff_seconds * 2 ** (delivery.attempts - 1))
    retry_at = now + dt.timedelta(seconds=delay * random.uniform(0.5, 1.0))
    too_old = retry_at - delivery.attempts_since > dt.timedelta(seconds=policy.max_age_seconds)
    if isinstance(result.error, PermanentDeliveryError) or delivery.attempts >= policy.max_attempts or too_old:
        delivery.status = QueueDelivery.Status.DEAD
        delivery.next_attempt_at = None
        logger.error("Delivery %s to %s is dead: %s", delivery.id, delivery.queue_name, delivery.last_error)
    else:
        delivery.status = QueueDelivery.Status.RETRYING
        delivery.next_attempt_at = retry_at
    return delivery


# --- The sweep ----------------------------------------------------------------------


@dataclass
class SweepResult:
    """What one sweep found; the caller sends the wake-ups."""

    jobs_to_wake: list[uuid.UUID] = field(default_factory=list)
    deliveries_to_send: list[uuid.UUID] = field(default_factory=list)
    reclaimed: int = 0
    expired: int = 0
    purged: int = 0


def sweep() -> SweepResult:
    """Repair what lost messages and dead workers left behind. Safe to run anywhere, often.

    1. running jobs whose lease expired go back to the queue (or fail, out of attempts);
    2. queued jobs older than ``async_config.timeout`` expire;
    3. queued jobs nobody claimed ``REQUEUE_AFTER_SECONDS`` after their wake-up get another;
    4. deliveries that are due are handed to the delivery task;
    5. finished jobs older than ``async_config.result_ttl`` are deleted.
    """
    now = timezone.now()
    result = SweepResult()
    result.reclaimed = _reclaim_expired_leases(now)
    result.expired = _expire_waiting_jobs(now)
    result.jobs_to_wake = _rewake_unclaimed_jobs(now)
    result.deliveries_to_send = _claim_due_deliveries(now)
    result.purged = _purge_finished_jobs(now)
    return result


def _reclaim_expired_leases(now: dt.datetime) -> int:
    worker = get_settings().worker
    with transaction.atomic():
        jobs = list(Job.objects.lease_expired(now).select_for_update(skip_locked=True)[: worker.sweep_limit])
        lost = {"type": "WorkerLost", "message": "The worker running this job stopped before finishing it."}
        requeue = [job for job in jobs if job.attempts < worker.max_attempts]
        fail = [job for job in jobs if job.attempts >= worker.max_attempts]
        for job in requeue:
            _requeue(job, now, lost, delay=0)
            job.run_after = None
        for job in fail:
            _finish(job, Job.Status.FAILED, now, error=lost)
        _save_rows(Job, jobs, _OUTCOME_FIELDS)
        QueueDelivery.objects.bulk_create(
            [delivery for job in fail for delivery in _deliveries_for(job, now, due_now=True)]
        )
    if jobs:
        logger.warning("Reclaimed %d jobs whose worker was lost (%d failed for good)", len(jobs), len(fail))
    return len(jobs)


def _expire_waiting_jobs(now: dt.datetime) -> int:
    timeout = get_config().app_settings.async_config.timeout
    if timeout is None:
        return 0
    with transaction.atomic():
        jobs = list(
            Job.objects.waited_since(now - dt.timedelta(seconds=timeout)).select_for_update(skip_locked=True)[
                : get_settings().worker.sweep_limit
            ]
        )
        error = {"type": "Expired", "message": f"The job waited more than {timeout} s in the queue."}
        for job in jobs:
            _finish(job, Job.Status.EXPIRED, now, error=error)
        _save_rows(Job, jobs, _OUTCOME_FIELDS)
        QueueDelivery.objects.bulk_create(
            [delivery for job in jobs for delivery in _deliveries_for(job, now, due_now=True)]
        )
    return len(jobs)


def _rewake_unclaimed_jobs(now: dt.datetime) -> list[uuid.UUID]:
    worker = get_settings().worker
    cutoff = now - dt.timedelta(seconds=worker.requeue_after_seconds)
    with transaction.atomic():
        ids = list(
            Job.objects.unclaimed_since(cutoff, now)
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)[: worker.sweep_limit]
        )
        Job.objects.filter(id__in=ids).update(enqueued_at=now)
    return ids


def _claim_due_deliveries(now: dt.datetime) -> list[uuid.UUID]:
    claim = dt.timedelta(seconds=get_settings().delivery.claim_seconds)
    with transaction.atomic():
        ids = list(
            QueueDelivery.objects.due(now)
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)[: get_settings().worker.sweep_limit]
        )
        QueueDelivery.objects.filter(id__in=ids).update(next_attempt_at=now + claim)
    return ids


def _purge_finished_jobs(now: dt.datetime) -> int:
    ttl = get_config().app_settings.async_config.result_ttl
    if ttl is None:
        return 0
    # A result still being delivered stays until it is sent or dead.
    expired = Job.objects.finished_before(now - dt.timedelta(seconds=ttl)).exclude(
        deliveries__status__in=QueueDelivery.UNSENT
    )
    ids = list(expired.values_list("id", flat=True)[: get_settings().worker.sweep_limit])
    if not ids:
        return 0
    # Checked again as it is deleted: a job re-run meanwhile is no longer finished.
    _, per_model = expired.filter(id__in=ids).delete()
    return per_model.get(Job._meta.label, 0)
