"""Jobs: what a client asked for, and where its run stands.

::

    queued ──claim──▶ running ──finish──▶ succeeded | failed
      ▲  │              │ │
      │  │              │ └──finish (transient error, attempts left)──▶ queued (run_after: backoff)
      │  │              └────reclaim (lease expired)──▶ queued, or failed when out of attempts
      │  ├──cancel──▶ canceled ◀──cancel── running, when its Modal call is known (and cancelled too)
      │  └──expire (past its deadline, or waited past async_config.timeout)──▶ expired
      └──rerun── succeeded | failed | canceled | expired

The transitions are the QuerySet verbs of :mod:`.job_transitions` (and :mod:`.job_calls`
for the Modal call a running job waits on).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from .job_transitions import JobQuerySet
from .states import FINISHED_JOB_STATUSES, JobPriority, JobStatus

__all__ = ["Job"]


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
    # When it last entered the queue: submitted (a scheduled job: its run_after), or re-run.
    # The global expiry counts from here.
    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When the last wake-up message was sent; None: none is in flight, the sweep sends one.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # Not before: the request's run_after, or backoff after a transient failure.
    run_after = models.DateTimeField(null=True, blank=True)
    # The request's deadline (or ttl): expired if not started by then. NULL: the global
    # async_config timeout, counted from queued_at.
    expires_at = models.DateTimeField(null=True, blank=True)
    # What a running pipeline reported: progress from 0 to 1, and its partial outputs.
    progress = models.FloatField(null=True, blank=True)
    progress_message = models.CharField(max_length=255, blank=True)
    partial_outputs = models.JSONField(default=list, blank=True)
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

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["-created_at"], name="modalkit_job_created_idx"),
            models.Index(fields=["owner", "-created_at"], name="modalkit_job_owner_idx"),
            models.Index(fields=["batch"], condition=Q(batch__isnull=False), name="modalkit_job_batch_idx"),
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
            # The sweep's re-wake: failed wake-ups (NULL) first, then the oldest.
            models.Index(fields=["enqueued_at"], condition=Q(status=JobStatus.QUEUED), name="modalkit_job_queued_idx"),
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
        self.run_after = now + dt.timedelta(seconds=delay) if delay else None
        # No wake-up is in flight: the sweep sends one once run_after has passed.
        self.enqueued_at = None
        self.lease_token = self.lease_expires_at = None
