"""What API clients and operators can do: one function per use case.

Views, admin actions and management commands call these; none of them writes the
models directly. Functions are synchronous and keyword-only; the ones that act on many
rows take a QuerySet and work set-based, a few statements whatever its size. Workers
are woken through :mod:`~modalkit_django.wakeups` once the transaction commits, so a
worker never sees an uncommitted row.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from .clients import cancel_calls
from .conf import get_settings, resolve_model
from .exceptions import IdempotencyConflict, InvalidJobState, JobNotFound
from .intake import committed, get_intake
from .messages import deliveries_for
from .models import ApiKey, DeliveryQuerySet, Job, JobQuerySet, QueueDelivery
from .scheduling import Schedule
from .threads import run_sync
from .wakeups import get_waker

__all__ = [
    "BulkResult",
    "asubmit_job",
    "authenticate_api_key",
    "cancel_job",
    "cancel_jobs",
    "create_api_key",
    "get_job",
    "list_jobs",
    "redeliver",
    "redeliver_deliveries",
    "rerun_job",
    "rerun_jobs",
    "submit_job",
]


# --- API keys ----------------------------------------------------------------------


def create_api_key(*, owner: Any, name: str, allowed_queues: Sequence[str] | None = None) -> tuple[ApiKey, str]:
    """Create a key for ``owner``, allowed to send results to ``allowed_queues`` (names or
    patterns; by default ``MODALKIT["API"]["DEFAULT_ALLOWED_QUEUES"]``); returns the row
    and the raw key (shown once)."""
    api_key = ApiKey(owner=owner, name=name)
    if allowed_queues is not None:
        api_key.allowed_queues = list(allowed_queues)
    raw_key = api_key.set_new_key()
    api_key.save()
    return api_key, raw_key


def authenticate_api_key(*, raw_key: str) -> ApiKey | None:
    return (
        ApiKey.objects.select_related("owner")
        .filter(digest=ApiKey.digest_of(raw_key), revoked_at__isnull=True, owner__is_active=True)
        .first()
    )


# --- Submitting and reading jobs ------------------------------------------------------


def submit_job(
    *,
    message: dict[str, Any],
    model_name: str | None = None,
    success_queue: str = "",
    failure_queue: str = "",
    meta: dict[str, Any] | None = None,
    owner: Any = None,
    api_key_prefix: str = "",
    idempotency_key: str | None = None,
    schedule: Schedule | None = None,
) -> Job:
    """Store a queued job; a worker is woken once the transaction commits (a scheduled one, once due).

    With an ``idempotency_key`` the owner already used for the same request, the
    job from then is returned (``job.replayed`` is True) and nothing new is queued;
    with another request, :class:`IdempotencyConflict`.
    """
    job = _new_job(
        message, model_name, success_queue, failure_queue, meta, owner, api_key_prefix, idempotency_key, schedule
    )
    if idempotency_key and (existing := _job_for_key(owner, idempotency_key, job.request_fingerprint)):
        return existing
    try:
        with transaction.atomic():
            job.save(force_insert=True)
    except IntegrityError:
        # The same key, submitted concurrently, won the race.
        replay = _job_for_key(owner, idempotency_key, job.request_fingerprint) if idempotency_key else None
        if replay is None:
            raise
        return replay
    transaction.on_commit(partial(committed, [job]))
    return job


async def asubmit_job(
    *,
    message: dict[str, Any],
    model_name: str | None = None,
    success_queue: str = "",
    failure_queue: str = "",
    meta: dict[str, Any] | None = None,
    owner: Any = None,
    api_key_prefix: str = "",
    idempotency_key: str | None = None,
    schedule: Schedule | None = None,
) -> Job:
    """:func:`submit_job` for async code: jobs submitted together are inserted together.

    A submit with an ``idempotency_key`` checks for its first job, so it takes the
    one-by-one path.
    """
    if idempotency_key:
        return await run_sync(
            submit_job,
            message=message,
            model_name=model_name,
            success_queue=success_queue,
            failure_queue=failure_queue,
            meta=meta,
            owner=owner,
            api_key_prefix=api_key_prefix,
            idempotency_key=idempotency_key,
            schedule=schedule,
        )
    job = _new_job(message, model_name, success_queue, failure_queue, meta, owner, api_key_prefix, None, schedule)
    return await get_intake().submit(job)


def _new_job(
    message: dict[str, Any],
    model_name: str | None,
    success_queue: str,
    failure_queue: str,
    meta: dict[str, Any] | None,
    owner: Any,
    api_key_prefix: str,
    idempotency_key: str | None,
    schedule: Schedule | None = None,
) -> Job:
    """A queued job, not saved yet."""
    model_name = resolve_model(model_name)
    meta = meta or {}
    schedule = schedule or Schedule()
    now = timezone.now()
    request = (message, success_queue, failure_queue, meta, *schedule.fingerprint())
    job = Job(
        model_name=model_name,
        message=message,
        success_queue=success_queue,
        failure_queue=failure_queue,
        meta=meta,
        owner=owner,
        api_key_prefix=api_key_prefix,
        created_at=now,
        queued_at=now,
        enqueued_at=now,
        idempotency_key=idempotency_key or "",
        request_fingerprint=_fingerprint(model_name, *request) if idempotency_key else "",
    )
    schedule.apply(job, now)
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


# --- Steering jobs and deliveries -----------------------------------------------------


@dataclass(frozen=True)
class BulkResult:
    """What a bulk action did: how many rows it changed, and the rest by status."""

    done: int
    left_alone: dict[str, int]


def cancel_jobs(jobs: JobQuerySet) -> BulkResult:
    """Cancel the queued jobs among ``jobs``, and the running ones on a known Modal call
    (which is cancelled once the transaction commits); their failure queues hear about it."""
    with transaction.atomic():
        canceled = jobs.cancel()
        # Sent by the wake-up below; the sweep steps in only if that never happens.
        deliveries = QueueDelivery.objects.bulk_create(deliveries_for(canceled, timezone.now(), sent_by_caller=True))
        transaction.on_commit(partial(get_waker().wake_deliveries, [delivery.id for delivery in deliveries]))
        call_ids = [job.modal_call_id for job in canceled if job.modal_call_id]
        if call_ids:
            # Bounded (the backend's cancel_timeout): a slow Modal does not hold the request long.
            transaction.on_commit(partial(cancel_calls, call_ids))
    return _bulk_result(jobs, [job.id for job in canceled])


def cancel_job(*, job: Job) -> Job:
    """Cancel one queued job, or a running one whose Modal call is known; :class:`InvalidJobState`
    if it runs otherwise (it already started) or ended."""
    result = cancel_jobs(Job.objects.filter(id=job.id))
    if not result.done:
        raise InvalidJobState(job.id, next(iter(result.left_alone), "gone"), "cancel")
    return Job.objects.get(id=job.id)


def rerun_jobs(jobs: JobQuerySet) -> BulkResult:
    """Run the finished jobs among ``jobs`` again, each as a new generation with fresh deliveries."""
    with transaction.atomic():
        ids = jobs.rerun()
        transaction.on_commit(partial(get_waker().wake_jobs, ids))
    return _bulk_result(jobs, ids)


def rerun_job(*, job: Job) -> Job:
    """Re-run one finished job; :class:`InvalidJobState` if it has not finished."""
    result = rerun_jobs(Job.objects.filter(id=job.id))
    if not result.done:
        raise InvalidJobState(job.id, next(iter(result.left_alone), "gone"), "re-run")
    return Job.objects.get(id=job.id)


def _bulk_result(jobs: QuerySet[Job], changed: list[uuid.UUID]) -> BulkResult:
    left_alone = jobs.exclude(id__in=changed).order_by().values_list("status").annotate(n=Count("id"))
    return BulkResult(done=len(changed), left_alone=dict(left_alone))


def redeliver_deliveries(deliveries: DeliveryQuerySet) -> int:
    """Send these deliveries' stored payloads again, whatever their status; how many."""
    with transaction.atomic():
        ids = deliveries.redeliver(claim_seconds=get_settings().delivery.claim_seconds)
        transaction.on_commit(partial(get_waker().wake_deliveries, ids))
    return len(ids)


def redeliver(*, delivery: QueueDelivery) -> QueueDelivery:
    """Send one delivery's stored payload again, with a fresh attempt budget."""
    redeliver_deliveries(QueueDelivery.objects.filter(id=delivery.id))
    delivery.refresh_from_db()
    return delivery
