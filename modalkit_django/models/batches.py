"""Batches: many jobs submitted in one request, counted and completed together.

A batch is complete once none of its jobs is left to finish (queued or running):
:meth:`BatchQuerySet.complete` marks it so exactly once, whoever finishes its last job
(a worker, the sweep, an operator cancelling), with its completion message in the
same transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connections, models, transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.db.models.functions import Now
from django.utils import timezone

from . import sql
from .jobs import Job
from .states import UNFINISHED_JOB_STATUSES

if TYPE_CHECKING:
    from .deliveries import QueueDelivery

__all__ = ["Batch", "BatchQuerySet"]


class BatchQuerySet(models.QuerySet["Batch"]):
    def for_owner(self, owner: Any) -> BatchQuerySet:
        """Batches an API caller may see: its own (``None`` is the static ModalKit key)."""
        return self.filter(owner=owner) if owner is not None else self.filter(owner__isnull=True)

    def done(self) -> BatchQuerySet:
        """Batches not yet marked complete none of whose jobs is left to finish.

        Asked after every finish of a batch's jobs: the partial index on a batch's
        unfinished jobs (``modalkit_job_batch_open_idx``) answers it in one probe, however
        many of its jobs finished already (walking them was O(n²) over a batch's life).
        """
        unfinished = Job.objects.filter(batch=OuterRef("pk"), status__in=UNFINISHED_JOB_STATUSES)
        return self.filter(completed_at__isnull=True).exclude(Exists(unfinished))

    def complete(
        self, *, deliveries_for: Callable[[list[Batch]], list[QueueDelivery]], limit: int | None = None
    ) -> tuple[list[Batch], list[QueueDelivery]]:
        """Mark complete the done batches among these (oldest first, ``limit`` at most),
        with the deliveries ``deliveries_for`` makes for them, in one transaction.

        Locked and compared-and-set: two callers finishing a batch's last jobs at once
        complete it once. Returns the batches and their deliveries.
        """
        # Looked for first without a transaction: a worker asks after every finish, and
        # nearly always its batches have jobs left.
        ids = list(self.done().order_by("created_at").values_list("id", flat=True)[:limit])
        if not ids:
            return [], []
        now = timezone.now()
        with transaction.atomic(savepoint=False, using=self.db):
            locked = self.model._default_manager.using(self.db).filter(id__in=ids)
            batches = list(locked.done().order_by("created_at").select_for_update(skip_locked=True))
            if not batches:
                return [], []
            self.model._default_manager.using(self.db).filter(id__in=[batch.id for batch in batches]).update(
                completed_at=now
            )
            for batch in batches:
                batch.completed_at = now
            deliveries = deliveries_for(batches)
            if deliveries:
                type(deliveries[0])._default_manager.using(self.db).bulk_create(deliveries)
        return batches, deliveries

    def purge_emptied(self, *, older_than: float, limit: int) -> int:
        """Delete up to ``limit`` batches completed more than ``older_than`` seconds ago
        whose jobs were all purged."""
        emptied = self.filter(completed_at__lt=Now() - dt.timedelta(seconds=older_than)).exclude(
            Exists(Job.objects.filter(batch=OuterRef("pk")))
        )
        ids = list(emptied.order_by("completed_at").values_list("id", flat=True)[:limit])
        deleted, _ = self.model._default_manager.using(self.db).filter(id__in=ids).delete()
        return deleted

    def create_with_jobs(self, batch: Batch, jobs: Sequence[Job]) -> None:
        """Insert ``batch`` and its ``jobs`` (new, unsaved) in one transaction: all or nothing."""
        with transaction.atomic(using=self.db):
            batch.save(force_insert=True, using=self.db)
            if connections[self.db].vendor == "postgresql":
                sql.insert_jobs(Job, jobs, using=self.db)
            else:
                Job.objects.using(self.db).bulk_create(jobs)

    def status_counts(self) -> dict[uuid.UUID, dict[str, int]]:
        """How many of each batch's jobs are in each status: one ``GROUP BY``."""
        rows = (
            Job.objects.using(self.db)
            .filter(batch__in=self.values("id"))
            .order_by()
            .values_list("batch_id", "status")
            .annotate(n=Count("id"))
        )
        counts: dict[uuid.UUID, dict[str, int]] = {}
        for batch_id, status, n in rows:
            counts.setdefault(batch_id, {})[status] = n
        return counts


class Batch(models.Model):
    """The request behind ``POST /async/predict/batch``; its jobs point here."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model_name = models.CharField(max_length=100)
    size = models.PositiveIntegerField(help_text="How many jobs the batch holds.")
    # Where one message goes when the last job finishes; empty: nowhere.
    completion_queue = models.CharField(max_length=255, blank=True)
    meta = models.JSONField(default=dict, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="modalkit_batches",
    )
    api_key_prefix = models.CharField(max_length=16, blank=True)
    idempotency_key = models.CharField(max_length=255, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # When its last job finished (and its completion message, if any, was recorded).
    completed_at = models.DateTimeField(null=True, blank=True)

    objects = BatchQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "batches"
        indexes = [
            models.Index(fields=["-created_at"], name="modalkit_batch_created_idx"),
            # The sweep's completion check: batches not completed yet.
            models.Index(fields=["created_at"], condition=Q(completed_at__isnull=True), name="modalkit_batch_open_idx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="modalkit_batch_idempotency_key_unique",
            ),
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=~Q(idempotency_key="") & Q(owner__isnull=True),
                name="modalkit_batch_idempotency_key_unowned_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_name} batch {self.id} ({self.size} jobs)"

    def job_ids(self) -> list[uuid.UUID]:
        """Its jobs' ids in the order of the request's items."""
        return list(self.jobs.order_by("created_at", "id").values_list("id", flat=True))
