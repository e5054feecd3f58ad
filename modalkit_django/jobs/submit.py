"""Submitting a job: the row a request becomes, and what happens once it is committed.

:func:`submit_job` stores one queued job in the caller's transaction; workers are woken
through :mod:`.wakeups` once it commits, so a worker never sees an uncommitted row. The
API's async path inserts many submits together (:mod:`modalkit_django.api.intake`) and
batches insert theirs in one statement (:mod:`.batches`); both build each row with
:func:`new_job` and call :func:`committed` after their commit, as this does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import partial
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from .. import metrics
from ..conf import resolve_model
from ..exceptions import IdempotencyConflict
from ..models import Job
from .scheduling import Schedule
from .wakeups import get_waker

__all__ = ["committed", "job_for_key", "new_job", "request_fingerprint", "submit_job"]


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
    job = new_job(
        message, model_name, success_queue, failure_queue, meta, owner, api_key_prefix, idempotency_key, schedule
    )
    if idempotency_key and (existing := job_for_key(owner, idempotency_key, job.request_fingerprint)):
        return existing
    try:
        with transaction.atomic():
            job.save(force_insert=True)
    except IntegrityError:
        # The same key, submitted concurrently, won the race.
        replay = job_for_key(owner, idempotency_key, job.request_fingerprint) if idempotency_key else None
        if replay is None:
            raise
        return replay
    transaction.on_commit(partial(committed, [job]))
    return job


def new_job(
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
        idempotency_key=idempotency_key or "",
        request_fingerprint=request_fingerprint(model_name, *request) if idempotency_key else "",
    )
    schedule.apply(job, now)
    return job


def request_fingerprint(model_name: str, *request: Any) -> str:
    canonical = json.dumps([model_name, *request], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def job_for_key(owner: Any, key: str, fingerprint: str) -> Job | None:
    job = Job.objects.for_owner(owner).filter(idempotency_key=key).first()
    if job is None:
        return None
    if job.request_fingerprint != fingerprint:
        raise IdempotencyConflict(key, job.id)
    job.replayed = True
    return job


def committed(jobs: Sequence[Job]) -> None:
    """After a submit's jobs are committed: count them, and wake workers for those due now."""
    metrics.jobs_submitted(job.model_name for job in jobs)
    # A job due later (run_after) needs no wake-up: idle workers look at every poll.
    if due := [job.id for job in jobs if job.run_after is None or job.run_after <= job.created_at]:
        get_waker().wake_jobs(due)
