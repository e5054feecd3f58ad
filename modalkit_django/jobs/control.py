"""Steering jobs and deliveries: cancel, re-run, redeliver, one row or a whole selection.

Views, admin actions and management commands call these; each works set-based on a
QuerySet, :data:`CHUNK` rows per transaction, and wakes workers through :mod:`.wakeups`
once each chunk commits: one wake-up per chunk, and any worker with room claims them.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from ..clients import cancel_calls
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


# Rows per transaction of a bulk action: each chunk commits (and wakes workers) on its own,
# so a selection of a million rows never holds a million locks, or one transaction open
# for minutes, and workers start on the first chunk while the next is being changed.
CHUNK = 1000


@dataclass(frozen=True)
class BulkResult:
    """What a bulk action did: how many rows it changed, and the rest by status."""

    done: int
    left_alone: dict[str, int]


def _chunks(selection: QuerySet[Any]) -> Iterator[list[tuple[uuid.UUID, str]]]:
    """The selection's (id, status), ``CHUNK`` at a time, in id order: a keyset walk that
    reads ids and statuses only, never the rows' JSON."""
    after: uuid.UUID | None = None
    while True:
        page = selection.order_by("id")
        if after is not None:
            page = page.filter(id__gt=after)
        rows = list(page.values_list("id", "status")[:CHUNK])
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def _act(selection: QuerySet[Any], act: Callable[[list[uuid.UUID]], list[uuid.UUID]]) -> BulkResult:
    """``act`` on each chunk of the selection in a transaction of its own; what changed, and
    the rest by the status they had."""
    done, left_alone = 0, Counter[str]()
    for rows in _chunks(selection):
        with transaction.atomic():
            changed = set(act([row_id for row_id, _ in rows]))
        done += len(changed)
        left_alone.update(status for row_id, status in rows if row_id not in changed)
    return BulkResult(done=done, left_alone=dict(left_alone))


def cancel_jobs(jobs: JobQuerySet) -> BulkResult:
    """Cancel the queued jobs among ``jobs``, and the running ones on a known Modal call
    (which is cancelled once the transaction commits); their failure queues hear about it."""

    def cancel(ids: list[uuid.UUID]) -> list[uuid.UUID]:
        canceled = Job.objects.filter(id__in=ids).cancel()
        # Due at once: the wake-up below sends a delivery loop after them.
        deliveries = QueueDelivery.objects.bulk_create(deliveries_for(canceled, timezone.now(), sent_by_caller=False))
        transaction.on_commit(partial(get_waker().wake_deliveries, [delivery.id for delivery in deliveries]))
        if call_ids := [job.modal_call_id for job in canceled if job.modal_call_id]:
            # Bounded (the backend's cancel_timeout): a slow Modal does not hold the request long.
            transaction.on_commit(partial(cancel_calls, call_ids))
        return [job.id for job in canceled]

    return _act(jobs, cancel)


def cancel_job(*, job: Job) -> Job:
    """Cancel one queued job, or a running one whose Modal call is known; :class:`InvalidJobState`
    if it runs otherwise (it already started) or ended."""
    result = cancel_jobs(Job.objects.filter(id=job.id))
    if not result.done:
        raise InvalidJobState(job.id, next(iter(result.left_alone), "gone"), "cancel")
    return Job.objects.get(id=job.id)


def rerun_jobs(jobs: JobQuerySet) -> BulkResult:
    """Run the finished jobs among ``jobs`` again, each as a new generation with fresh deliveries."""

    def rerun(ids: list[uuid.UUID]) -> list[uuid.UUID]:
        again = Job.objects.filter(id__in=ids).rerun()
        transaction.on_commit(partial(get_waker().wake_jobs, again))
        return again

    return _act(jobs, rerun)


def rerun_job(*, job: Job) -> Job:
    """Re-run one finished job; :class:`InvalidJobState` if it has not finished."""
    result = rerun_jobs(Job.objects.filter(id=job.id))
    if not result.done:
        raise InvalidJobState(job.id, next(iter(result.left_alone), "gone"), "re-run")
    return Job.objects.get(id=job.id)


def redeliver_deliveries(deliveries: DeliveryQuerySet) -> int:
    """Send these deliveries' stored payloads again, whatever their status; how many."""

    def redeliver(ids: list[uuid.UUID]) -> list[uuid.UUID]:
        again = QueueDelivery.objects.filter(id__in=ids).redeliver()
        transaction.on_commit(partial(get_waker().wake_deliveries, again))
        return again

    return _act(deliveries, redeliver).done


def redeliver(*, delivery: QueueDelivery) -> QueueDelivery:
    """Send one delivery's stored payload again, with a fresh attempt budget."""
    redeliver_deliveries(QueueDelivery.objects.filter(id=delivery.id))
    delivery.refresh_from_db()
    return delivery
