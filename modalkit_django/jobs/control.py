"""Steering jobs and deliveries: cancel, re-run, redeliver, one row or a whole selection.

Views, admin actions and management commands call these; each works set-based on a
QuerySet, and wakes workers through :mod:`.wakeups` once its transaction commits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import partial

from django.db import transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from ..clients import cancel_calls
from ..conf import get_settings
from ..exceptions import InvalidJobState
from ..models import DeliveryQuerySet, Job, JobQuerySet, QueueDelivery
from .messages import deliveries_for
from .wakeups import get_waker

__all__ = [
    "BulkResult",
    "cancel_job",
    "cancel_jobs",
    "redeliver",
    "redeliver_deliveries",
    "rerun_job",
    "rerun_jobs",
]


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
