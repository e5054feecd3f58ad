"""The transitions of a job's state, as set-based QuerySet verbs (``Job.objects.claim(...)``).

See :mod:`.jobs` for the state diagram. Each verb changes many rows in a few statements,
whatever their number; the ones the sweep runs take the oldest rows first through the
partial index that serves them. A verb never trusts what it read earlier: it locks or
compare-and-sets the rows it changes, so a duplicate message, a late worker or an
operator acting at the same moment changes nothing twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from django.db import connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from ..exceptions import InferenceError, PipelineError
from ..validators import json_problem
from . import postgres
from .job_progress import ProgressQuerySet
from .states import FINISHED_JOB_STATUSES, OUTCOME_FIELDS, UNSENT_DELIVERY_STATUSES, JobStatus, save_rows

if TYPE_CHECKING:
    from .deliveries import QueueDelivery
    from .jobs import Job

__all__ = ["JobQuerySet", "Settled"]

logger = logging.getLogger(__name__)

# A model's output, or why there is none (clients.Prediction; not imported: a lower layer).
Prediction = dict[str, Any] | InferenceError

WORKER_LOST = {"type": "WorkerLost", "message": "The worker running this job stopped before finishing it."}
CANCELED = {"type": "Canceled", "message": "The job was canceled before it ran."}
CANCELED_RUNNING = {"type": "Canceled", "message": "The job was canceled while it ran; its Modal call was cancelled."}


def _expiry(job: Job, timeout: float | None) -> dict[str, str]:
    if job.expires_at is not None:
        return {"type": "Expired", "message": f"The job was not started by its deadline, {job.expires_at.isoformat()}."}
    return {"type": "Expired", "message": f"The job waited more than {timeout:g} s in the queue."}


class Settled(NamedTuple):
    """Claimed jobs with their outcomes set, not yet stored (:meth:`JobQuerySet.settle`)."""

    jobs: list[Job]
    tokens: list[uuid.UUID | None]  # the lease each was claimed under
    finished: list[Job]  # those that succeeded or failed for good: they get deliveries


class JobQuerySet(ProgressQuerySet):
    def for_owner(self, owner: Any) -> JobQuerySet:
        """Jobs an API caller may see: its own (``None`` is the static ModalKit key)."""
        return self.filter(owner=owner) if owner is not None else self.filter(owner__isnull=True)

    def runnable(self, now: dt.datetime) -> JobQuerySet:
        """Queued, due (``run_after``) and not past its own deadline (``expires_at``)."""
        due = Q(run_after__isnull=True) | Q(run_after__lte=now)
        return self.filter(due, Q(expires_at__isnull=True) | Q(expires_at__gt=now), status=JobStatus.QUEUED)

    # --- The worker: claim, keep, finish --------------------------------------------

    def claim(self, job_ids: Iterable[uuid.UUID | str], *, lease_seconds: float) -> list[Job]:
        """Mark the runnable ones among ``job_ids`` running under one new lease; return them,
        with as many more runnable jobs at most of a higher priority than the lowest of those.

        A job already claimed, finished, not yet due or past its deadline is skipped, so a
        duplicate message does nothing. The higher-priority jobs taken along are those whose
        own wake-ups wait behind these in the broker; those wake-ups then find them claimed.
        """
        now = timezone.now()
        token = uuid.uuid4()
        expires = now + dt.timedelta(seconds=lease_seconds)
        ids = [str(job_id) for job_id in job_ids]
        if connections[self.db].vendor == "postgresql":
            return postgres.claim(self.model, ids, token=token, now=now, expires=expires, extra=len(ids), using=self.db)
        with transaction.atomic(savepoint=False, using=self.db):
            jobs = list(self.runnable(now).filter(id__in=ids).select_for_update(skip_locked=True))
            if jobs:
                ahead = self.runnable(now).filter(priority__gt=min(job.priority for job in jobs)).exclude(id__in=ids)
                jobs += ahead.order_by("-priority", "queued_at").select_for_update(skip_locked=True)[: len(ids)]
            if not jobs:
                return []
            self.model._default_manager.using(self.db).filter(id__in=[job.id for job in jobs]).update(
                status=JobStatus.RUNNING,
                started_at=now,
                attempts=F("attempts") + 1,
                lease_token=token,
                lease_expires_at=expires,
            )
        for job in jobs:
            job.status = JobStatus.RUNNING
            job.started_at = now
            job.attempts += 1
            job.lease_token = token
            job.lease_expires_at = expires
        return jobs

    def renew_leases(self, lease_tokens: Iterable[uuid.UUID], *, lease_seconds: float) -> int:
        """The heartbeat of a live worker: push back the leases of the batches it runs."""
        tokens = list(lease_tokens)
        if not tokens:
            return 0
        expires = timezone.now() + dt.timedelta(seconds=lease_seconds)
        return self.filter(status=JobStatus.RUNNING, lease_token__in=tokens).update(lease_expires_at=expires)

    def finish(
        self,
        results: Sequence[tuple[Job, Prediction]],
        *,
        max_attempts: int,
        retry_backoff_seconds: float,
        deliveries_for: Callable[[list[Job]], list[QueueDelivery]],
    ) -> list[QueueDelivery]:
        """Store each claimed job's output or error, with the deliveries of those that
        finished (``deliveries_for`` makes them), in one transaction; return the deliveries.

        A transient error sends its job back to the queue with backoff until it has used
        ``max_attempts``. A job whose lease was reclaimed meanwhile belongs to another run
        and is left alone. A worker runs the halves apart: :meth:`settle` off its database thread.
        """
        settled = self.settle(results, max_attempts=max_attempts, retry_backoff_seconds=retry_backoff_seconds)
        return self.store(settled, deliveries_for(settled.finished))

    def settle(
        self, results: Sequence[tuple[Job, Prediction]], *, max_attempts: int, retry_backoff_seconds: float
    ) -> Settled:
        """Set each claimed job's outcome on it, in memory (no query); see :meth:`finish`."""
        now = timezone.now()
        tokens = [job.lease_token for job, _ in results]
        finished: list[Job] = []
        for job, prediction in results:
            if not isinstance(prediction, InferenceError) and (problem := json_problem(prediction, max_depth=None)):
                # One output the database refuses must not fail its whole batch.
                prediction = PipelineError(f"The model's output cannot be stored: it contains {problem}")
            if isinstance(prediction, InferenceError) and prediction.retryable and job.attempts < max_attempts:
                job.requeue(now, prediction.as_dict(), delay=retry_backoff_seconds * 2 ** (job.attempts - 1))
                job.modal_call_id = None  # that call ended: the next attempt makes a new one
            elif isinstance(prediction, InferenceError):
                job.end(JobStatus.FAILED, now, error=prediction.as_dict())
                finished.append(job)
            else:
                job.end(JobStatus.SUCCEEDED, now, result=prediction)
                finished.append(job)
        return Settled([job for job, _ in results], tokens, finished)

    def store(self, settled: Settled, deliveries: Sequence[QueueDelivery]) -> list[QueueDelivery]:
        """Write the outcomes :meth:`settle` set, and the deliveries of the finished jobs,
        where each job's lease still holds; return the deliveries written."""
        jobs = settled.jobs
        if connections[self.db].vendor == "postgresql":
            held = postgres.finish(self.model, jobs, settled.tokens, deliveries, using=self.db)
        else:
            held = self._finish_through_the_orm(settled, deliveries)
        if dropped := len(jobs) - len(held):
            logger.warning("%d jobs were reclaimed before they finished; their runs' results are dropped", dropped)
        return [delivery for delivery in deliveries if delivery.job_id in held]

    def _finish_through_the_orm(self, settled: Settled, deliveries: Sequence[QueueDelivery]) -> set[uuid.UUID]:
        jobs, tokens = settled.jobs, dict(zip([job.id for job in settled.jobs], settled.tokens, strict=True))
        with transaction.atomic(savepoint=False, using=self.db):
            held = set(
                self.select_for_update()
                .filter(id__in=list(tokens), status=JobStatus.RUNNING, lease_token__in=set(tokens.values()))
                .values_list("id", flat=True)
            )
            save_rows(self.model, [job for job in jobs if job.id in held], OUTCOME_FIELDS, using=self.db)
            rows = [delivery for delivery in deliveries if delivery.job_id in held]
            if rows:
                type(rows[0])._default_manager.using(self.db).bulk_create(rows)
        return held

    # --- The sweep: oldest first, a bounded number per pass ---------------------------

    def reclaim_expired(self, *, max_attempts: int, limit: int) -> tuple[list[Job], list[Job]]:
        """Running jobs whose lease expired (their worker died), oldest lease first.

        Back to the queue, or failed once out of attempts. Returns (requeued, failed).
        """
        now = timezone.now()
        with transaction.atomic(savepoint=False, using=self.db):
            jobs = list(
                self.filter(status=JobStatus.RUNNING, lease_expires_at__lt=now)
                .order_by("lease_expires_at")
                .select_for_update(skip_locked=True)[:limit]
            )
            requeued = [job for job in jobs if job.attempts < max_attempts]
            failed = [job for job in jobs if job.attempts >= max_attempts]
            for job in requeued:
                job.requeue(now, WORKER_LOST, delay=0)
            for job in failed:
                job.end(JobStatus.FAILED, now, error=WORKER_LOST)
            save_rows(self.model, jobs, OUTCOME_FIELDS, using=self.db)
        return requeued, failed

    def expire_waiting(self, *, timeout: float | None, limit: int) -> list[Job]:
        """Queued jobs not started in time, expired: those past their own deadline
        (``expires_at``), and those without one that waited longer than ``timeout``
        seconds (``None``: no limit); up to ``limit`` of each, oldest first."""
        now = timezone.now()
        queued = self.filter(status=JobStatus.QUEUED).select_for_update(skip_locked=True)
        with transaction.atomic(savepoint=False, using=self.db):
            jobs = list(queued.filter(expires_at__lt=now).order_by("expires_at")[:limit])
            if timeout is not None:
                cutoff = now - dt.timedelta(seconds=timeout)
                jobs += queued.filter(expires_at__isnull=True, queued_at__lt=cutoff).order_by("queued_at")[:limit]
            for job in jobs:
                job.end(JobStatus.EXPIRED, now, error=_expiry(job, timeout))
            save_rows(self.model, jobs, OUTCOME_FIELDS, using=self.db)
        return jobs

    def take_unwoken(self, *, woken_before: dt.datetime, limit: int) -> list[uuid.UUID]:
        """Runnable queued jobs with no wake-up in flight, or none since ``woken_before``.

        Those whose wake-up failed come first, then the longest-waiting. They are marked
        woken now; the caller sends the wake-ups.
        """
        now = timezone.now()
        with transaction.atomic(savepoint=False, using=self.db):
            ids = list(
                self.runnable(now)
                .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=woken_before))
                .order_by(F("enqueued_at").asc(nulls_first=True), "queued_at")
                .select_for_update(skip_locked=True)
                .values_list("id", flat=True)[:limit]
            )
            self.model._default_manager.using(self.db).filter(id__in=ids).update(enqueued_at=now)
        return ids

    def mark_unwoken(self, job_ids: Iterable[uuid.UUID | str]) -> int:
        """Their wake-up was never sent: the next sweep sends it, whatever REQUEUE_AFTER says."""
        return self.filter(id__in=list(job_ids), status=JobStatus.QUEUED).update(enqueued_at=None)

    def purge_finished(self, *, finished_before: dt.datetime, limit: int) -> int:
        """Delete up to ``limit`` jobs finished before then, with their deliveries; oldest first.

        Jobs whose results are still being delivered stay. The rows are locked before they
        are deleted and the condition is checked again as they are: a job re-run or
        redelivered meanwhile survives. Only ids are read, never the JSON.
        """
        doomed = self.filter(status__in=FINISHED_JOB_STATUSES, finished_at__lt=finished_before).exclude(
            deliveries__status__in=UNSENT_DELIVERY_STATUSES
        )
        with transaction.atomic(savepoint=False, using=self.db):
            ids = list(
                doomed.order_by("finished_at").select_for_update(skip_locked=True).values_list("id", flat=True)[:limit]
            )
            if not ids:
                return 0
            _, per_model = doomed.filter(id__in=ids).only("id").delete()
        return per_model.get(self.model._meta.label, 0)

    # --- Operators and clients -----------------------------------------------------------

    def cancel(self) -> list[Job]:
        """Cancel the queued jobs among these, and the running ones whose Modal call is known
        (the caller cancels those calls: ``modal_call_id``); return them. Others are left alone.

        A worker still waiting on such a call finds its lease gone and drops what it gets.
        """
        now = timezone.now()
        cancelable = Q(status=JobStatus.QUEUED) | Q(status=JobStatus.RUNNING, modal_call_id__isnull=False)
        with transaction.atomic(savepoint=False, using=self.db):
            jobs = list(self.filter(cancelable).select_for_update(of=("self",)))
            for job in jobs:
                job.end(JobStatus.CANCELED, now, error=CANCELED if job.status == JobStatus.QUEUED else CANCELED_RUNNING)
            save_rows(self.model, jobs, OUTCOME_FIELDS, using=self.db)
        return jobs

    def rerun(self) -> list[uuid.UUID]:
        """Queue the finished jobs among these again, as a new generation; return their ids."""
        now = timezone.now()
        with transaction.atomic(savepoint=False, using=self.db):
            finished = self.filter(status__in=FINISHED_JOB_STATUSES).select_for_update(of=("self",))
            ids = list(finished.values_list("id", flat=True))
            self.model._default_manager.using(self.db).filter(id__in=ids).update(
                status=JobStatus.QUEUED,
                reruns=F("reruns") + 1,
                attempts=0,
                result=None,
                error=None,
                started_at=None,
                finished_at=None,
                run_after=None,
                # A deadline is the first run's: a re-run falls back to the global timeout.
                expires_at=None,
                lease_token=None,
                lease_expires_at=None,
                modal_call_id=None,
                queued_at=now,
                enqueued_at=now,
            )
        return ids
