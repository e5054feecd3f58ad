"""The sweep: what repairs lost messages and dead workers, once per period across all machines.

Every worker process (and the embedded broker) runs :func:`run_sweeper`; each period,
the first to take the shared :class:`~modalkit_django.models.SweepState` row sweeps and
the others skip. A sweep, oldest rows first and a bounded number of each per pass:

1. running jobs whose lease expired (their worker died) go back to the queue, or fail
   once out of attempts (their Modal call, if any, is cancelled);
2. queued jobs past their own deadline (``expires_at``: the request's ``deadline`` or
   ``ttl``), and those without one that waited longer than ``async_config.timeout``,
   expire (likewise);
3. queued jobs with no wake-up in flight get one: those whose wake-up failed or that
   were scheduled (``run_after``) and are now due, all of them after the broker lost its
   messages (its epoch changed), and any nobody claimed within
   ``WORKER["REQUEUE_AFTER_SECONDS"]``. A scheduled job therefore starts at most about
   one ``SWEEP_INTERVAL_SECONDS`` (1.2 times that with the jitter) after its ``run_after``, when a
   worker is free;
4. deliveries that are due are handed to the delivery task, batches' completion messages
   among them (a batch whose last jobs ended here, or in two workers at once, is
   completed just before);
5. finished jobs older than ``async_config.result_ttl`` are deleted, in chunks (and the
   batches left with none).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import random
import socket
import uuid
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from .. import metrics
from ..clients import acancel_calls
from ..conf import get_config, get_settings
from ..jobs.completion import complete_done_batches
from ..jobs.messages import deliveries_for
from ..jobs.wakeups import get_waker
from ..models import Batch, Job, QueueDelivery, SweepState
from .database import run_db

__all__ = ["SweepResult", "run_sweeper", "sweep", "sweep_once", "worker_name"]

logger = logging.getLogger(__name__)

# Chunks of SWEEP_LIMIT rows the purge deletes per pass at most.
PURGE_CHUNKS = 10


@dataclass
class SweepResult:
    """What one sweep did; the caller sends the wake-ups."""

    reclaimed: int = 0
    lost: int = 0
    expired: int = 0
    purged: int = 0
    jobs_to_wake: list[uuid.UUID] = field(default_factory=list)
    deliveries_to_send: list[uuid.UUID] = field(default_factory=list)
    # Modal calls of jobs that ended here (failed, expired): nobody waits for them any more.
    calls_to_cancel: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        counts = dataclasses.asdict(self)
        counts["woken"] = len(counts.pop("jobs_to_wake"))
        counts["deliveries"] = len(counts.pop("deliveries_to_send"))
        counts["calls_canceled"] = len(counts.pop("calls_to_cancel"))
        return counts


def worker_name() -> str:
    """This process, as the sweep and the admin name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def sweep(*, worker: str, broker_epoch: str | None) -> SweepResult | None:
    """One pass, if this period's sweep is still to be taken; ``None`` if another process has it.

    ``broker_epoch`` is the broker's current epoch (``None`` if the broker could not be
    asked): when it differs from the last one seen, every queued job is woken again.
    """
    settings = get_settings().worker
    # A sweep still "running" after a lease is taken to have died with its worker: the
    # next one must not wait longer for it than a dead worker's jobs wait for theirs.
    state = SweepState.objects.begin(
        worker=worker,
        period=settings.sweep_interval_seconds * 0.8,
        stale_after=max(settings.lease_seconds, 2 * settings.sweep_interval_seconds),
    )
    if state is None:
        return None
    now = timezone.now()
    epoch_since = state.broker_epoch_since
    if broker_epoch is not None and broker_epoch != state.broker_epoch:
        if state.broker_epoch:
            logger.warning(
                "The broker lost its messages (epoch %s → %s); waking every queued job",
                state.broker_epoch,
                broker_epoch,
            )
            epoch_since = now
        state.broker_epoch = broker_epoch
    result = SweepResult()
    try:
        _reclaim(result)
        _expire(result)
        # Batches whose last jobs just ended: their completion messages are due now, sent below.
        complete_done_batches(limit=settings.sweep_limit)
        woken_before = now - dt.timedelta(seconds=settings.requeue_after_seconds)
        if epoch_since is not None:
            woken_before = max(woken_before, epoch_since)
        result.jobs_to_wake = Job.objects.take_unwoken(woken_before=woken_before, limit=settings.sweep_limit)
        result.deliveries_to_send = QueueDelivery.objects.claim_due(
            claim_seconds=get_settings().delivery.claim_seconds, limit=settings.sweep_limit
        )
        _purge(result)
    finally:
        SweepState.objects.filter(pk=state.pk, worker=worker).update(
            finished_at=timezone.now(),
            last_result=result.summary(),
            broker_epoch=state.broker_epoch,
            broker_epoch_since=epoch_since,
        )
    return result


def _reclaim(result: SweepResult) -> None:
    worker = get_settings().worker
    with transaction.atomic():
        requeued, failed = Job.objects.reclaim_expired(max_attempts=worker.max_attempts, limit=worker.sweep_limit)
        QueueDelivery.objects.bulk_create(deliveries_for(failed, timezone.now(), sent_by_caller=False))
    result.reclaimed, result.lost = len(requeued), len(failed)
    result.calls_to_cancel += [job.modal_call_id for job in failed if job.modal_call_id]
    if requeued or failed:
        logger.warning(
            "Reclaimed %d jobs whose worker was lost (%d failed for good)", len(requeued) + len(failed), len(failed)
        )


def _expire(result: SweepResult) -> None:
    # Jobs past their own deadline expire even when the global timeout is off (None).
    timeout = get_config().app_settings.async_config.timeout
    with transaction.atomic():
        expired = Job.objects.expire_waiting(timeout=timeout, limit=get_settings().worker.sweep_limit)
        QueueDelivery.objects.bulk_create(deliveries_for(expired, timezone.now(), sent_by_caller=False))
    result.expired = len(expired)
    result.calls_to_cancel += [job.modal_call_id for job in expired if job.modal_call_id]


def _purge(result: SweepResult) -> None:
    ttl = get_config().app_settings.async_config.result_ttl
    if ttl is None:
        return
    limit = get_settings().worker.sweep_limit
    cutoff = timezone.now() - dt.timedelta(seconds=ttl)
    for _ in range(PURGE_CHUNKS):
        purged = Job.objects.purge_finished(finished_before=cutoff, limit=limit)
        result.purged += purged
        if purged < limit:
            break
    Batch.objects.purge_emptied(completed_before=cutoff, limit=limit)


async def sweep_once(*, worker: str | None = None) -> SweepResult | None:
    """Run the sweep (if it is this process's turn) and send the wake-ups it asks for."""
    waker = get_waker()
    try:
        epoch: str | None = await waker.broker_epoch()
    except Exception as exc:
        logger.warning("Could not read the broker's epoch: %s", exc)
        epoch = None
    result = await run_db(sweep, worker=worker or worker_name(), broker_epoch=epoch)
    if result is not None:
        metrics.sweep_actions(result.summary())
        if result.jobs_to_wake:
            await waker.awake_jobs(result.jobs_to_wake)
        if result.deliveries_to_send:
            await waker.awake_deliveries(result.deliveries_to_send)
        if result.calls_to_cancel:
            await acancel_calls(result.calls_to_cancel)
    return result


async def run_sweeper() -> None:
    """Sweep forever, every ``WORKER["SWEEP_INTERVAL_SECONDS"]`` (jittered so processes spread out)."""
    interval = get_settings().worker.sweep_interval_seconds
    name = worker_name()
    await asyncio.sleep(random.uniform(0, interval))
    while True:
        try:
            await sweep_once(worker=name)
        except Exception:
            logger.exception("Sweep failed; trying again in %ss", interval)
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))
