"""Batches: many jobs in one request, one transaction, one completion message.

::

    submit_batch(items) ─▶ INSERT batch + INSERT its jobs (one bulk statement), one transaction
                          └─ on commit: one wake-up (a nudge: any worker with room claims them)

Each item is built into its job by the same code as a single submit
(:func:`.submit.new_job`), so every field a single request has, an item has. A batch is
completed by :mod:`.completion` once its last job finishes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Prefetch, Q
from django.utils import timezone

from ..conf import resolve_model
from ..exceptions import BatchNotFound, IdempotencyConflict, JobNotFound
from ..models import Batch, Job, JobStatus, QueueDelivery
from .scheduling import Schedule
from .submit import committed, new_job, request_fingerprint

__all__ = [
    "BatchStatus",
    "SubmittedBatch",
    "get_batch",
    "list_batch_jobs",
    "submit_batch",
]

# An item's fields that make its job's Schedule, rather than its request.
SCHEDULE_FIELDS = tuple(field.name for field in dataclasses.fields(Schedule))


def submit_batch(
    *,
    items: Sequence[Mapping[str, Any]],
    model_name: str | None = None,
    success_queue: str = "",
    failure_queue: str = "",
    meta: dict[str, Any] | None = None,
    completion_queue: str = "",
    owner: Any = None,
    api_key_prefix: str = "",
    idempotency_key: str | None = None,
) -> SubmittedBatch:
    """Store a batch and one queued job per item, in one transaction; wake workers once it commits.

    Each item holds a single async request's fields (``message`` and any others it
    sets); an item that leaves out ``success_queue`` or ``failure_queue`` gets the
    batch's, and its ``meta`` is laid over the batch's. Jobs are created in item order
    (``created_at`` one microsecond apart), which is the order of
    :meth:`Batch.job_ids`. ``idempotency_key``: as :func:`~.submit.submit_job`, for the
    whole batch (``replayed``; :class:`IdempotencyConflict` for another request).
    """
    if not items:
        raise ValueError("a batch needs at least one item")
    model_name = resolve_model(model_name)
    meta = meta or {}
    shared = {"success_queue": success_queue, "failure_queue": failure_queue}
    requests = []
    for item in items:
        request: dict[str, Any] = {**shared, **item, "meta": {**meta, **(item.get("meta") or {})}}
        schedule = Schedule(**{name: request.pop(name) for name in SCHEDULE_FIELDS if name in request})
        requests.append((request, schedule))
    fingerprint = ""
    if idempotency_key:
        # What each job would run, as a single submit's fingerprint sees it: a field left
        # out and the same field given its default are the same request.
        whole = [[request, *schedule.fingerprint()] for request, schedule in requests]
        fingerprint = request_fingerprint(model_name, whole, meta, completion_queue)
        if existing := _batch_for_key(owner, idempotency_key, fingerprint):
            return SubmittedBatch(existing, existing.job_ids(), replayed=True)
    now = timezone.now()
    batch = Batch(
        model_name=model_name,
        size=len(items),
        completion_queue=completion_queue,
        meta=meta,
        owner=owner,
        api_key_prefix=api_key_prefix,
        idempotency_key=idempotency_key or "",
        request_fingerprint=fingerprint,
        created_at=now,
    )
    jobs = []
    for index, (request, schedule) in enumerate(requests):
        job = new_job(
            **request,
            model_name=model_name,
            owner=owner,
            api_key_prefix=api_key_prefix,
            idempotency_key=None,
            schedule=schedule,
        )
        job.batch = batch
        job.created_at = now + dt.timedelta(microseconds=index)
        jobs.append(job)
    try:
        Batch.objects.create_with_jobs(batch, jobs)
    except IntegrityError:
        # The same key, submitted concurrently, won the race.
        replay = _batch_for_key(owner, idempotency_key, fingerprint) if idempotency_key else None
        if replay is None:
            raise
        return SubmittedBatch(replay, replay.job_ids(), replayed=True)
    transaction.on_commit(partial(committed, jobs))
    job_ids = [job.id for job in jobs]
    return SubmittedBatch(batch, job_ids)


def _batch_for_key(owner: Any, key: str, fingerprint: str) -> Batch | None:
    batch = Batch.objects.for_owner(owner).filter(idempotency_key=key).first()
    if batch is None:
        return None
    if batch.request_fingerprint != fingerprint:
        raise IdempotencyConflict(key, batch.id, what="batch")
    return batch


@dataclasses.dataclass(frozen=True)
class SubmittedBatch:
    """What :func:`submit_batch` stored (or found, for a repeated Idempotency-Key)."""

    batch: Batch
    job_ids: list[uuid.UUID]
    replayed: bool = False


@dataclasses.dataclass(frozen=True)
class BatchStatus:
    """A batch as its owner sees it: its jobs' ids in item order, how many are in each
    status, and its completion delivery once one was made."""

    batch: Batch
    job_ids: list[uuid.UUID]
    counts: dict[str, int]
    completion: QueueDelivery | None


def _owned_batch(batch_id: uuid.UUID | str, owner: Any) -> Batch:
    try:
        return Batch.objects.for_owner(owner).get(id=batch_id)
    except (Batch.DoesNotExist, ValidationError) as exc:
        raise BatchNotFound(batch_id) from exc


def get_batch(*, batch_id: uuid.UUID | str, owner: Any) -> BatchStatus:
    """The caller's batch; :class:`BatchNotFound` for anyone else's."""
    # Each statement sees what was committed before it: the completion is read first, so
    # that once it is seen the batch's completed_at (committed with it) is seen too.
    try:
        canonical = uuid.UUID(str(batch_id))
    except ValueError as exc:
        raise BatchNotFound(batch_id) from exc
    completion = QueueDelivery.objects.filter(message_id=f"{canonical}:batch").first()
    batch = _owned_batch(batch_id, owner)
    counts = Batch.objects.filter(id=batch.id).status_counts().get(batch.id, {})
    return BatchStatus(
        batch=batch,
        job_ids=batch.job_ids(),
        counts={status: counts.get(status, 0) for status in JobStatus.values},
        completion=completion,
    )


def list_batch_jobs(
    *,
    batch_id: uuid.UUID | str,
    owner: Any,
    status: str | None = None,
    limit: int = 100,
    after: uuid.UUID | str | None = None,
) -> tuple[list[Job], Job | None]:
    """The caller's batch's jobs in item order, ``limit`` at a time, from the one after ``after``.

    Returns the page and the job to pass as ``after`` for the next one (or ``None``);
    :class:`BatchNotFound` for anyone else's batch, :class:`JobNotFound` for an ``after``
    that is not one of its jobs.
    """
    batch = _owned_batch(batch_id, owner)
    deliveries = Prefetch("deliveries", queryset=QueueDelivery.objects.defer("payload"))
    jobs = batch.jobs.prefetch_related(deliveries).order_by("created_at", "id")
    if status:
        jobs = jobs.filter(status=status)
    if after is not None:
        try:
            cursor = batch.jobs.get(id=after)
        except (Job.DoesNotExist, ValidationError) as exc:
            raise JobNotFound(after) from exc
        jobs = jobs.filter(Q(created_at__gt=cursor.created_at) | Q(created_at=cursor.created_at, id__gt=cursor.id))
    page = list(jobs[: limit + 1])
    return page[:limit], (page[limit - 1] if len(page) > limit else None)
