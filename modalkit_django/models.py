"""Jobs, their queue deliveries, and the API keys that own them.

Postgres is the source of truth: a broker message only wakes a worker up, so every
state a job or delivery can be in is a row that the sweep can find again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import secrets
import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

__all__ = ["ApiKey", "Job", "QueueDelivery", "json_storage_problem"]


def json_storage_problem(value: Any) -> str | None:
    """Why a JSON column cannot store ``value``, or ``None`` if it can.

    Python's ``json`` happily produces ``NaN``/``Infinity`` and keeps NUL characters;
    PostgreSQL's ``jsonb`` refuses both, failing the whole transaction.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return f"the number {value} (JSON has no NaN or Infinity)"
    if isinstance(value, str) and "\x00" in value:
        return "a NUL character (\\u0000)"
    if isinstance(value, dict):
        items: list[Any] = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return None
    return next((problem for item in items if (problem := json_storage_problem(item))), None)


class JobQuerySet(models.QuerySet["Job"]):
    def for_owner(self, owner: Any) -> JobQuerySet:
        """Jobs an API caller may see: its own (``None`` is the static ModalKit key)."""
        return self.filter(owner=owner) if owner is not None else self.filter(owner__isnull=True)

    def runnable(self, now: dt.datetime) -> JobQuerySet:
        return self.filter(Q(run_after__isnull=True) | Q(run_after__lte=now), status=Job.Status.QUEUED)

    def unclaimed_since(self, cutoff: dt.datetime, now: dt.datetime) -> JobQuerySet:
        """Queued and runnable, but no wake-up sent since ``cutoff``: the message may be lost."""
        return self.runnable(now).filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=cutoff))

    def lease_expired(self, now: dt.datetime) -> JobQuerySet:
        return self.filter(status=Job.Status.RUNNING, lease_expires_at__lt=now)

    def waited_since(self, cutoff: dt.datetime) -> JobQuerySet:
        return self.filter(status=Job.Status.QUEUED, queued_at__lt=cutoff)

    def finished_before(self, cutoff: dt.datetime) -> JobQuerySet:
        return self.filter(status__in=Job.FINISHED, finished_at__lt=cutoff)


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"


FINISHED_JOB_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED)


class Job(models.Model):
    Status = JobStatus
    FINISHED = FINISHED_JOB_STATUSES

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model_name = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
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
    )
    created_at = models.DateTimeField(default=timezone.now)
    # When it last entered the queue: submitted, or re-run. Expiry counts from here.
    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When the last wake-up message was sent; the sweep resends it if nobody claims the job.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # Not before: set after a transient failure, for backoff.
    run_after = models.DateTimeField(null=True, blank=True)
    lease_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # The client's Idempotency-Key, and a hash of the request it came with.
    idempotency_key = models.CharField(max_length=255, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)

    objects = JobQuerySet.as_manager()

    # Not stored: True on the job submit_job() returns for a repeated Idempotency-Key.
    replayed = False

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["-created_at"], name="modalkit_job_created_idx"),
            models.Index(fields=["owner", "-created_at"], name="modalkit_job_owner_idx"),
            models.Index(fields=["enqueued_at"], condition=Q(status=JobStatus.QUEUED), name="modalkit_job_queued_idx"),
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


class DeliveryQuerySet(models.QuerySet["QueueDelivery"]):
    def due(self, now: dt.datetime) -> DeliveryQuerySet:
        return self.filter(status__in=QueueDelivery.UNSENT, next_attempt_at__lte=now)


class DeliveryRoute(models.TextChoices):
    SUCCESS = "success"
    FAILURE = "failure"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    SENT = "sent"
    RETRYING = "retrying"
    DEAD = "dead"


UNSENT_DELIVERY_STATUSES = (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)


class QueueDelivery(models.Model):
    """One message to one queue: the job's result on its success or failure route."""

    Route = DeliveryRoute
    Status = DeliveryStatus
    UNSENT = UNSENT_DELIVERY_STATUSES

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="deliveries")
    route = models.CharField(max_length=8, choices=Route.choices)
    queue_name = models.CharField(max_length=255)
    backend = models.CharField(max_length=100, help_text="Alias in MODALKIT['QUEUES'].")
    # Stable across retries and redeliveries, so consumers can drop duplicates.
    message_id = models.CharField(max_length=100, unique=True)
    payload = models.JSONField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # Start of the current attempt budget (MAX_AGE_SECONDS): creation, or the last redelivery.
    attempts_since = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    external_id = models.CharField(max_length=255, blank=True, help_text="Id the queue gave the message.")
    created_at = models.DateTimeField(default=timezone.now)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "queue deliveries"
        permissions = [("redeliver_queuedelivery", "Can redeliver results")]
        indexes = [
            models.Index(fields=["-created_at"], name="modalkit_delivery_created_idx"),
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status__in=UNSENT_DELIVERY_STATUSES),
                name="modalkit_delivery_due_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=DeliveryStatus.values), name="modalkit_delivery_status_valid"
            ),
            models.CheckConstraint(condition=Q(route__in=DeliveryRoute.values), name="modalkit_delivery_route_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.route} → {self.queue_name} ({self.status})"


class ApiKey(models.Model):
    """A bearer key for the API. Only its SHA-256 is stored; the key is shown once."""

    PREFIX = "mk_"

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="modalkit_api_keys")
    prefix = models.CharField(max_length=16, editable=False, help_text="The key's first characters.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def digest_of(cls, raw_key: str) -> str:
        # Keys are 256 random bits, so a fast hash is enough (no password stretching).
        return hashlib.sha256(raw_key.encode()).hexdigest()

    def set_new_key(self) -> str:
        """Generate a key, store its digest, and return it (the only time it is seen)."""
        raw_key = self.PREFIX + secrets.token_urlsafe(32)
        self.prefix = raw_key[: len(self.PREFIX) + 6]
        self.digest = self.digest_of(raw_key)
        return raw_key

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
