"""Completing a batch: whoever sees its last job finish marks it, with one completion message.

::

    a worker finishes jobs ─▶ complete_batches(their batch ids)   ┐ whoever sees the last job
    the sweep               ─▶ complete_done_batches()            ┘ finished marks the batch
                               completed_at, + one QueueDelivery (route "batch") to its
                               completion_queue, sent like any other delivery
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection

from django.utils import timezone

from ..models import Batch, Job, JobStatus, QueueDelivery
from ..models.states import DeliveryRoute
from ..queues import queues

__all__ = ["complete_batches", "complete_done_batches", "completion_message_id"]


def completion_message_id(batch: Batch) -> str:
    return f"{batch.id}:batch"  # as get_batch() reads it


def complete_batches(batch_ids: Collection[uuid.UUID | str]) -> list[QueueDelivery]:
    """After a worker's finish committed: complete those of these batches whose last job it
    was; returns their completion deliveries, due at once (for the delivery loops)."""
    if not batch_ids:
        return []
    _, deliveries = Batch.objects.filter(id__in=list(batch_ids)).complete(deliveries_for=_completion_deliveries)
    return deliveries


def complete_done_batches(*, limit: int) -> list[QueueDelivery]:
    """The sweep's backstop: complete every done batch nobody completed (two workers
    finishing its last jobs at once each saw the other's unfinished; or its last job was
    cancelled, expired or failed for good by the sweep). Their deliveries are due now."""
    _, deliveries = Batch.objects.all().complete(deliveries_for=_completion_deliveries, limit=limit)
    return deliveries


def _completion_deliveries(batches: list[Batch]) -> list[QueueDelivery]:
    """One delivery per batch that names a completion queue, carried by its last job to finish."""
    named = [batch for batch in batches if batch.completion_queue]
    if not named:
        return []
    counts = Batch.objects.filter(id__in=[batch.id for batch in named]).status_counts()
    jobs: dict[uuid.UUID, list[tuple[uuid.UUID, dt.datetime | None]]] = {batch.id: [] for batch in named}
    rows = Job.objects.filter(batch__in=named).order_by("created_at", "id")
    for batch_id, job_id, finished_at in rows.values_list("batch_id", "id", "finished_at"):
        jobs[batch_id].append((job_id, finished_at))
    now = timezone.now()  # for the payload; the delivery's times are the database's
    deliveries = []
    for batch in named:
        if not jobs[batch.id]:
            continue  # its jobs were purged: nothing left to carry (or report) a message
        last_job_id = max(jobs[batch.id], key=lambda job: job[1] or batch.created_at)[0]
        payload = {
            "status": "completed",
            "batch_id": str(batch.id),
            "model_name": batch.model_name,
            "size": batch.size,
            "counts": {status: counts.get(batch.id, {}).get(status, 0) for status in JobStatus.values},
            "job_ids": [str(job_id) for job_id, _ in jobs[batch.id]],
            "meta": batch.meta,
            "created_at": batch.created_at.isoformat(),
            "completed_at": (batch.completed_at or now).isoformat(),
            "timestamp": now.isoformat(),
            "submitted_by": {"owner_id": batch.owner_id, "api_key": batch.api_key_prefix},
        }
        deliveries.append(
            QueueDelivery(
                job_id=last_job_id,
                route=DeliveryRoute.BATCH,
                queue_name=batch.completion_queue,
                backend=queues.route(batch.completion_queue),
                message_id=completion_message_id(batch),
                payload=payload,
            )
        )
    return deliveries
