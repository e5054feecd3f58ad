"""Jobs: what a client asked for, where its run stands, and the verbs that move it.

::

    queued ──claim──▶ running ──finish──▶ succeeded | failed
      ▲  │              │ │
      │  │              │ └──finish (transient error, attempts left)──▶ queued (run_after: backoff)
      │  │              └────reclaim (lease expired)──▶ queued, or failed when out of attempts
      │  ├──cancel──▶ canceled ◀──cancel── running, when its Modal call is known (and cancelled too)
      │  └──expire (past its deadline, or waited past async_config.timeout)──▶ expired
      └──rerun── succeeded | failed | canceled | expired

Each transition is a set-based verb of :class:`JobQuerySet` (``Job.objects.claim(...)``):
it changes many rows in a few statements, whatever their number; the ones the sweep runs
take the oldest rows first through the partial index that serves them. A verb never
trusts what it read earlier: it locks or compare-and-sets the rows it changes, so a
duplicate message, a late worker or an operator acting at the same moment changes
nothing twice. On PostgreSQL the worker's hot statements are single statements of
:mod:`.sql`; other databases (the embedded SQLite) take the ORM paths here.

What a running pipeline reports (progress, partial outputs) and the Modal call a running
job waits on are written by verbs here too: only while the job is still held under the
lease of the worker writing them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from django.conf import settings
from django.db import connections, models, transaction
from django.db.models import Case, ExpressionWrapper, F, Q, Value, When
from django.db.models.functions import Now
from django.utils import timezone

from ..exceptions import InferenceError, PipelineError
from . import sql
from .states import (
    FINISHED_JOB_STATUSES,
    OUTCOME_FIELDS,
    UNFINISHED_JOB_STATUSES,
    UNSENT_DELIVERY_STATUSES,
    JobPriority,
    JobStatus,
    save_rows,
)
from .validation import json_problem

if TYPE_CHECKING:
    from .deliveries import QueueDelivery

__all__ = ["Job", "JobOutput", "JobQuerySet", "Prediction", "ProgressReport", "Settled"]

logger = logging.getLogger(__name__)

# A model's output, or why there is none (clients.Prediction; not imported: a lower layer).
Prediction = dict[str, Any] | InferenceError

WORKER_LOST = {"type": "WorkerLost", "message": "The worker running this job stopped before finishing it."}
# Read by cancel: what the canceled jobs' failure messages carry, without what they do not.
HEAVY_FIELDS = ("result",)
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


@dataclass
class ProgressReport:
    """One job's news since the last write.

    ``progress``/``message`` of ``None`` leave the stored values alone; ``outputs`` are
    appended to this run's, the first of them at index ``start``; ``reset`` first clears
    what an earlier run stored (this run's first report).
    """

    job_id: uuid.UUID
    progress: float | None = None
    message: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    start: int = 0
    reset: bool = False


def _storable(job: Job, output: dict[str, Any], max_bytes: int | None) -> Prediction:
    """``output``, or why its job cannot store it. Its JSON is kept on the job
    (``result_json``): the statement that stores it encodes it no second time."""
    if problem := json_problem(output, max_depth=None):
        return PipelineError(f"The model's output cannot be stored: it contains {problem}")
    encoded = json.dumps(output)  # ASCII: one character, one byte
    if max_bytes is not None and len(encoded) > max_bytes:
        return PipelineError(
            f"The model's output is {len(encoded):,} bytes, over MODALKIT['WORKER']['MAX_RESULT_BYTES'] "
            f"({max_bytes:,}): return a reference (a URL to object storage) for a result that large"
        )
    job.result_json = encoded
    return output


class JobQuerySet(models.QuerySet["Job"]):
    def for_owner(self, owner: Any) -> JobQuerySet:
        """Jobs an API caller may see: its own (``None`` is the static ModalKit key)."""
        return self.filter(owner=owner) if owner is not None else self.filter(owner__isnull=True)

    def runnable(self) -> JobQuerySet:
        """Queued, due (``queued_at``, which a ``run_after`` or a retry's backoff puts ahead)
        and not past its own deadline (``expires_at``), by the database's clock."""
        return self.filter(
            Q(run_after__isnull=True) | Q(run_after__lte=Now()),
            Q(expires_at__isnull=True) | Q(expires_at__gt=Now()),
            status=JobStatus.QUEUED,
            queued_at__lte=Now(),
        )

    def scheduled(self) -> JobQuerySet:
        """Queued, but not due yet: a ``run_after`` or a retry's backoff ahead."""
        return self.filter(Q(queued_at__gt=Now()) | Q(run_after__gt=Now()), status=JobStatus.QUEUED)

    def seconds_to_next_due(self) -> float | None:
        """Seconds until the next queued job falls due, by the database's clock; ``None``
        if none is waiting for its time. One probe of the queued jobs' ``queued_at`` index."""
        wait = ExpressionWrapper(F("queued_at") - Now(), output_field=models.DurationField())
        waiting = self.filter(status=JobStatus.QUEUED, queued_at__gt=Now()).order_by("queued_at")
        first = waiting.values_list(wait, flat=True).first()
        return None if first is None else first.total_seconds()

    # --- The worker: claim, keep, finish --------------------------------------------

    def claim(
        self,
        *,
        limit: int,
        lease_seconds: float,
        token: uuid.UUID | None = None,
        only: Iterable[uuid.UUID | str] | None = None,
    ) -> list[Job]:
        """Mark up to ``limit`` runnable jobs running under one new lease, and return them:
        the highest priority first, then the longest due, whatever woke the worker.

        Rows locked by another worker's claim are skipped (``FOR UPDATE SKIP LOCKED``), so
        workers claiming at once never take the same job. ``only`` restricts the claim to
        those jobs (an operator's "run now", tests). The lease is ``lease_seconds`` from
        the database's clock; ``token`` names it (a new one by default).
        """
        token = token or uuid.uuid4()
        ids = None if only is None else [str(job_id) for job_id in only]
        if connections[self.db].vendor == "postgresql":
            return sql.claim(self.model, limit=limit, token=token, lease_seconds=lease_seconds, ids=ids, using=self.db)
        with transaction.atomic(savepoint=False, using=self.db):
            runnable = self.runnable() if ids is None else self.runnable().filter(id__in=ids)
            picked = list(
                runnable.order_by("-priority", "queued_at")
                .select_for_update(skip_locked=True)
                .values_list("id", flat=True)[:limit]
            )
            if not picked:
                return []
            self.model._default_manager.using(self.db).filter(id__in=picked).update(
                status=JobStatus.RUNNING,
                started_at=Now(),
                attempts=F("attempts") + 1,
                runs=F("runs") + 1,
                lease_token=token,
                lease_expires_at=Now() + dt.timedelta(seconds=lease_seconds),
            )
            return list(self.model._default_manager.using(self.db).filter(id__in=picked))

    def renew_leases(
        self, lease_tokens: Iterable[uuid.UUID], *, lease_seconds: float
    ) -> dict[uuid.UUID, set[uuid.UUID]]:
        """The heartbeat of a live worker: push back the leases of the batches it runs, by
        the database's clock. Returns, per lease, the jobs it still holds: a job missing
        was reclaimed or canceled meanwhile, and its work is no longer this worker's."""
        tokens = list(lease_tokens)
        if not tokens:
            return {}
        if connections[self.db].vendor == "postgresql":
            rows = sql.renew_leases(self.model, tokens, lease_seconds=lease_seconds, using=self.db)
        else:
            with transaction.atomic(savepoint=False, using=self.db):
                held = self.filter(status=JobStatus.RUNNING, lease_token__in=tokens).select_for_update()
                rows = [(token, job_id) for token, job_id in held.values_list("lease_token", "id") if token]
                held.update(lease_expires_at=Now() + dt.timedelta(seconds=lease_seconds))
        renewed: dict[uuid.UUID, set[uuid.UUID]] = {token: set() for token in tokens}
        for token, job_id in rows:
            renewed[token].add(job_id)
        return renewed

    def release(self, lease_tokens: Iterable[uuid.UUID]) -> int:
        """Give back the jobs still held under these leases, unfinished (a worker stopping):
        queued again at once, where they were in the queue, their attempt not counted."""
        return self.filter(status=JobStatus.RUNNING, lease_token__in=list(lease_tokens)).update(
            status=JobStatus.QUEUED, attempts=F("attempts") - 1, lease_token=None, lease_expires_at=None
        )

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
        self,
        results: Sequence[tuple[Job, Prediction]],
        *,
        max_attempts: int,
        retry_backoff_seconds: float,
        max_result_bytes: int | None = None,
    ) -> Settled:
        """Set each claimed job's outcome on it, in memory (no query); see :meth:`finish`.

        An output the database would refuse, or larger than ``max_result_bytes`` (its
        JSON), fails its own job, never its batch. The times set here are this host's, for
        what the worker reports; :meth:`store` writes the database's own (``now()``), which
        every later comparison uses.
        """
        now = timezone.now()
        tokens = [job.lease_token for job, _ in results]
        finished: list[Job] = []
        for job, prediction in results:
            if not isinstance(prediction, InferenceError):
                prediction = _storable(job, prediction, max_result_bytes)
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
            held = sql.finish(self.model, jobs, settled.tokens, deliveries, using=self.db)
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
            kept = [job for job in jobs if job.id in held]
            save_rows(self.model, kept, OUTCOME_FIELDS, using=self.db)
            # The times every later comparison reads are the database's own.
            manager = self.model._default_manager.using(self.db)
            manager.filter(id__in=[job.id for job in kept if job.is_finished]).update(finished_at=Now())
            for job in kept:
                if job.status == JobStatus.QUEUED:
                    due = Now() + dt.timedelta(seconds=job.retry_delay)
                    manager.filter(id=job.id).update(queued_at=due, run_after=due)
            rows = [delivery for delivery in deliveries if delivery.job_id in held]
            if rows:
                type(rows[0])._default_manager.using(self.db).bulk_create(rows)
        return held

    # --- The sweep: oldest first, a bounded number per pass ---------------------------

    def reclaim_expired(self, *, max_attempts: int, limit: int) -> tuple[list[Job], list[Job]]:
        """Running jobs whose lease expired by the database's clock (their worker died, or
        lost the database for a whole lease), oldest lease first.

        Back to the queue, due now, or failed once out of attempts. Returns (requeued, failed).
        """
        with transaction.atomic(savepoint=False, using=self.db):
            expired = list(
                self.filter(status=JobStatus.RUNNING, lease_expires_at__lt=Now())
                .order_by("lease_expires_at")
                .select_for_update(skip_locked=True)
                .values_list("id", "attempts")[:limit]
            )
            manager = self.model._default_manager.using(self.db)
            lost = {"lease_token": None, "lease_expires_at": None, "error": WORKER_LOST}
            again = [job_id for job_id, attempts in expired if attempts < max_attempts]
            manager.filter(id__in=again).update(status=JobStatus.QUEUED, queued_at=Now(), run_after=None, **lost)
            failed = [job_id for job_id, attempts in expired if attempts >= max_attempts]
            manager.filter(id__in=failed).update(status=JobStatus.FAILED, finished_at=Now(), **lost)
            return list(manager.filter(id__in=again)), list(manager.filter(id__in=failed))

    def expire_waiting(self, *, timeout: float | None, limit: int) -> list[Job]:
        """Queued jobs not started in time, expired: those past their own deadline
        (``expires_at``), and those without one that waited longer than ``timeout``
        seconds since they were due (``None``: no limit); up to ``limit`` of each, oldest
        first, by the database's clock."""
        queued = self.filter(status=JobStatus.QUEUED).select_for_update(skip_locked=True)
        with transaction.atomic(savepoint=False, using=self.db):
            jobs = list(queued.filter(expires_at__lt=Now()).order_by("expires_at")[:limit])
            if timeout is not None:
                cutoff = Now() - dt.timedelta(seconds=timeout)
                jobs += queued.filter(expires_at__isnull=True, queued_at__lt=cutoff).order_by("queued_at")[:limit]
            now = timezone.now()
            for job in jobs:
                job.end(JobStatus.EXPIRED, now, error=_expiry(job, timeout))
            save_rows(self.model, jobs, OUTCOME_FIELDS, using=self.db)
            self.model._default_manager.using(self.db).filter(id__in=[job.id for job in jobs]).update(finished_at=Now())
        return jobs

    def purge_finished(self, *, older_than: float, limit: int) -> int:
        """Delete up to ``limit`` jobs finished more than ``older_than`` seconds ago (by the
        database's clock), with their deliveries; oldest first.

        Jobs whose results are still being delivered stay. The jobs and their deliveries
        are locked before they are deleted and the condition is checked again as they are,
        so a job re-run, or a delivery redelivered, a moment before survives (a redelivery
        locks its job: :meth:`DeliveryQuerySet.redeliver`). Only ids are read, never the JSON.
        """
        doomed = self.filter(
            status__in=FINISHED_JOB_STATUSES, finished_at__lt=Now() - dt.timedelta(seconds=older_than)
        ).exclude(deliveries__status__in=UNSENT_DELIVERY_STATUSES)
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
            jobs = list(self.filter(cancelable).select_for_update(of=("self",)).defer(*HEAVY_FIELDS))
            for job in jobs:
                job.end(JobStatus.CANCELED, now, error=CANCELED if job.status == JobStatus.QUEUED else CANCELED_RUNNING)
            self.model._default_manager.using(self.db).filter(id__in=[job.id for job in jobs]).update(
                status=JobStatus.CANCELED,
                finished_at=Now(),
                lease_token=None,
                lease_expires_at=None,
                error=Case(
                    When(status=JobStatus.QUEUED, then=Value(CANCELED, output_field=models.JSONField())),
                    default=Value(CANCELED_RUNNING, output_field=models.JSONField()),
                ),
            )
        return jobs

    def rerun(self) -> list[uuid.UUID]:
        """Queue the finished jobs among these again, as a new generation; return their ids."""
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
                queued_at=Now(),
            )
        return ids

    # --- What a running batch writes while it runs ---------------------------------------

    def attach_calls(self, jobs: Sequence[Job]) -> set[uuid.UUID]:
        """Store the ``modal_call_id`` set on each claimed job, where its lease still holds.

        Returns the ids of the jobs written; the others were reclaimed or canceled
        meanwhile, and their calls belong to nobody.
        """
        calls = [job for job in jobs if job.modal_call_id]
        if not calls:
            return set()
        tokens = {job.lease_token for job in calls}
        if connections[self.db].vendor == "postgresql" and len(tokens) == 1:
            [token] = tokens
            assert token is not None
            pairs = [(job.id, job.modal_call_id or "") for job in calls]
            return sql.attach_calls(self.model, pairs, token=token, using=self.db)
        with transaction.atomic(savepoint=False, using=self.db):
            held = set(
                self.select_for_update()
                .filter(id__in=[job.id for job in calls], status=JobStatus.RUNNING, lease_token__in=tokens)
                .values_list("id", flat=True)
            )
            rows = [job for job in calls if job.id in held]
            if rows:
                save_rows(self.model, rows, ["modal_call_id"], using=self.db)
        return held

    def report_progress(self, reports: Sequence[ProgressReport], *, token: uuid.UUID) -> set[uuid.UUID]:
        """Write the reports of jobs still running under lease ``token``; return their ids.

        Partial outputs are rows of their own (:class:`JobOutput`), inserted: an output
        written is never written again, whatever the length of the stream.
        """
        if not reports:
            return set()
        if connections[self.db].vendor == "postgresql":
            return sql.report_progress(self.model, reports, token=token, using=self.db)
        with transaction.atomic(savepoint=False, using=self.db):
            jobs = self.select_for_update().filter(
                id__in=[report.job_id for report in reports], status=JobStatus.RUNNING, lease_token=token
            )
            held = {job.id: job for job in jobs}
            outputs = JobOutput._default_manager.using(self.db)
            for report in reports:
                if (job := held.get(report.job_id)) is None:
                    continue
                if report.reset:
                    job.progress, job.progress_message, job.output_count = None, "", 0
                    outputs.filter(job_id=job.id).exclude(run=job.runs).delete()
                if report.progress is not None:
                    job.progress = report.progress
                if report.message is not None:
                    job.progress_message = report.message
                outputs.bulk_create(
                    JobOutput(job_id=job.id, run=job.runs, seq=report.start + index, output=output)
                    for index, output in enumerate(report.outputs)
                )
                job.output_count += len(report.outputs)
                job.save(update_fields=["progress", "progress_message", "output_count"])
        return set(held)


class Job(models.Model):
    Status = JobStatus
    Priority = JobPriority
    FINISHED = FINISHED_JOB_STATUSES

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model_name = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    priority = models.SmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    # Submitted as part of a batch (POST /async/predict/batch).
    # Indexed by modalkit_job_batch_idx, partial: most jobs have none, and an index entry
    # per job would be written again on each claim and finish.
    batch = models.ForeignKey(
        "Batch", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs", db_index=False
    )
    message = models.JSONField(help_text="The validated model input.")
    meta = models.JSONField(default=dict, blank=True)
    success_queue = models.CharField(max_length=255, blank=True)
    failure_queue = models.CharField(max_length=255, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True, help_text='{"type": ..., "message": ...}')
    attempts = models.PositiveIntegerField(default=0, help_text="Times a worker claimed this job.")
    reruns = models.PositiveIntegerField(default=0, help_text="Times an operator re-ran this job.")
    # Never reset, unlike attempts (a re-run starts them again): what tells one run's
    # partial outputs from another's.
    runs = models.PositiveIntegerField(default=0, help_text="Times a worker claimed this job, re-runs included.")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="modalkit_jobs",
        db_index=False,  # modalkit_job_owner_idx leads with it
    )
    # The submitting API key's prefix ("" for ModalKit's static key or the admin): sent
    # with the result, so that a receiver can check who asked.
    api_key_prefix = models.CharField(max_length=16, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # When it is due, in the queue: submitted (a scheduled job: its run_after), sent back
    # after an error (after its backoff), reclaimed, or re-run. Claims take the longest due
    # first and never one due later; the global expiry counts from here.
    # Written by the database (its clock, as every comparison with it) unless a run_after
    # sets it ahead.
    queued_at = models.DateTimeField(db_default=Now())
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Not before: the request's run_after, or backoff after a transient failure.
    run_after = models.DateTimeField(null=True, blank=True)
    # The request's deadline (or ttl): expired if not started by then. NULL: the global
    # async_config timeout, counted from queued_at.
    expires_at = models.DateTimeField(null=True, blank=True)
    # What a running pipeline reported: progress from 0 to 1, and its partial outputs.
    progress = models.FloatField(null=True, blank=True)
    progress_message = models.CharField(max_length=255, blank=True)
    # Partial outputs of the current run (``runs``): how many there are; each is a
    # JobOutput row.
    output_count = models.PositiveIntegerField(default=0)
    lease_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # The client's Idempotency-Key, and a hash of the request it came with.
    idempotency_key = models.CharField(max_length=255, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)
    # The Modal FunctionCall running it (inference backends with detached calls only): kept
    # when its worker is lost, so the next worker re-attaches instead of calling again.
    # NULL, not "": no call at all, as the claim and finish statements test it.
    modal_call_id = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001

    objects = JobQuerySet.as_manager()

    # Not stored: True on the job submit_job() returns for a repeated Idempotency-Key.
    replayed = False
    # Not stored: seconds until a job settled back into the queue is due (its backoff).
    retry_delay = 0.0
    # Not stored: the result's JSON, encoded once when the job was settled.
    result_json: str | None = None

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["-created_at"], name="modalkit_job_created_idx"),
            models.Index(fields=["owner", "-created_at"], name="modalkit_job_owner_idx"),
            models.Index(fields=["batch"], condition=Q(batch__isnull=False), name="modalkit_job_batch_idx"),
            # Whether a batch is done, after each finish of its jobs: its unfinished ones only.
            models.Index(
                fields=["batch"],
                condition=Q(batch__isnull=False, status__in=UNFINISHED_JOB_STATUSES),
                name="modalkit_job_batch_open_idx",
            ),
            # The admin's filters, newest first.
            models.Index(fields=["status", "-created_at"], name="modalkit_job_status_idx"),
            models.Index(fields=["model_name", "-created_at"], name="modalkit_job_model_idx"),
            # Claiming: the queued jobs of a higher priority than a batch's, highest and oldest first.
            models.Index(
                fields=["-priority", "queued_at"],
                condition=Q(status=JobStatus.QUEUED),
                name="modalkit_job_priority_idx",
            ),
            # Expiry by the request's own deadline.
            models.Index(
                fields=["expires_at"],
                condition=Q(status=JobStatus.QUEUED, expires_at__isnull=False),
                name="modalkit_job_deadline_idx",
            ),
            # Expiry, oldest first.
            models.Index(fields=["queued_at"], condition=Q(status=JobStatus.QUEUED), name="modalkit_job_waiting_idx"),
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status=JobStatus.RUNNING),
                name="modalkit_job_running_idx",
            ),
            models.Index(
                fields=["finished_at"],
                condition=Q(status__in=FINISHED_JOB_STATUSES),
                name="modalkit_job_finished_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=JobStatus.values), name="modalkit_job_status_valid"),
            models.CheckConstraint(condition=Q(priority__in=JobPriority.values), name="modalkit_job_priority_valid"),
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="modalkit_job_idempotency_key_unique",
            ),
            # Unique constraints treat NULLs as distinct: the static key's jobs (no owner) need their own.
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=~Q(idempotency_key="") & Q(owner__isnull=True),
                name="modalkit_job_idempotency_key_unowned_unique",
            ),
        ]
        permissions = [
            ("cancel_job", "Can cancel queued jobs"),
            ("rerun_job", "Can re-run jobs (runs inference again)"),
        ]

    def __str__(self) -> str:
        return f"{self.model_name} job {self.id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def partial_outputs(self) -> list[dict[str, Any]]:
        """What the pipeline yielded so far in this job's current run, in order (a query)."""
        rows = JobOutput._default_manager.using(self._state.db).filter(job_id=self.id, run=self.runs)
        return list(rows.order_by("seq").values_list("output", flat=True))

    def request(self) -> dict[str, Any]:
        """The async request as the client sent it (ModalKit's ``AsyncInputModel``)."""
        return {
            "message": self.message,
            "success_queue": self.success_queue,
            "failure_queue": self.failure_queue,
            "meta": self.meta,
        }

    # In-memory halves of the verbs above; the verbs save what these set (OUTCOME_FIELDS).

    def end(
        self,
        status: str,
        now: dt.datetime,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.result = result
        self.error = error
        self.finished_at = now
        self.lease_token = self.lease_expires_at = None

    def requeue(self, now: dt.datetime, error: dict[str, str], *, delay: float) -> None:
        self.status = JobStatus.QUEUED
        self.error = error
        # Due again after the backoff: the claim takes it from then on.
        self.retry_delay = delay
        self.queued_at = self.run_after = now + dt.timedelta(seconds=delay)
        self.lease_token = self.lease_expires_at = None


class JobOutput(models.Model):
    """One partial output a streaming pipeline yielded in one run of its job: appended,
    never rewritten; a new run's first report deletes the earlier runs'."""

    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="outputs", db_index=False)
    run = models.PositiveIntegerField(help_text="The job's runs when it was yielded.")
    seq = models.PositiveIntegerField(help_text="Its index among its run's outputs.")
    output = models.JSONField()

    class Meta:
        ordering = ["job", "run", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "run", "seq"], name="modalkit_joboutput_unique")]

    def __str__(self) -> str:
        return f"output {self.seq} of run {self.run} of job {self.job_id}"
