"""The sweep: what repairs dead workers, deadlines and history, once per period across all machines.

Every worker process (and the embedded broker) runs :func:`run_sweeper`; each period,
the first to take the shared :class:`~modalkit_django.models.SweepState` row sweeps and
the others skip. A sweep, oldest rows first and a bounded number of each per pass, by the
database's clock:

1. running jobs whose lease expired (their worker died, or lost the database for a whole
   lease) go back to the queue, due at once, or fail once out of attempts (their Modal
   call, if any, is cancelled). Not in the first pass after the sweeps themselves stopped
   (the database was away, or paused, or no worker ran): live workers' renewals, held up
   by the same outage, get :func:`quiet_seconds` to land before anything is reclaimed;
2. queued jobs past their own deadline (``expires_at``: the request's ``deadline`` or
   ``ttl``), and those without one that waited longer than ``async_config.timeout`` since
   they were due, expire (likewise);
3. batches whose last jobs ended here, or in two workers at once, are completed;
4. finished jobs older than ``async_config.result_ttl`` are deleted, in chunks (and the
   batches left with none).

Runnable jobs and due deliveries are not the sweep's: every worker claims them itself
(:mod:`.engine`), at its own speed. What the sweep makes due (reclaimed jobs, failure
messages) it only nudges the workers about.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import socket
import uuid
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

from .. import metrics
from ..clients import acancel_calls
from ..conf import get_config, get_settings
from ..jobs.completion import complete_done_batches
from ..jobs.messages import deliveries_for
from ..jobs.wakeups import get_waker
from ..models import Batch, Job, QueueDelivery, SweepState
from .database import SWEEPS, DatabaseThread, run_db

__all__ = ["SweepResult", "quiet_seconds", "run_sweeper", "sweep", "sweep_once", "worker_name"]

logger = logging.getLogger(__name__)

# Chunks of SWEEP_LIMIT rows the purge deletes per pass at most.
PURGE_CHUNKS = 10
# The longest a worker's step waits between two tries at a database that went away
# (run_db's backoff): a renewal held up by an outage lands at most this long after it.
DATABASE_BACKOFF_SECONDS = 5.0


@dataclass
class SweepResult:
    """What one sweep did; the caller nudges the workers."""

    reclaimed: int = 0
    lost: int = 0
    expired: int = 0
    purged: int = 0
    # Set when this pass left expired leases alone: the sweeps had stopped (an outage).
    quiet: bool = False
    jobs_to_wake: list[uuid.UUID] = field(default_factory=list)
    deliveries_to_send: list[uuid.UUID] = field(default_factory=list)
    # Modal calls of jobs that ended here (failed, expired): nobody waits for them any more.
    calls_to_cancel: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        counts = dataclasses.asdict(self)
        counts["quiet"] = int(counts["quiet"])
        counts["woken"] = len(counts.pop("jobs_to_wake"))
        counts["deliveries"] = len(counts.pop("deliveries_to_send"))
        counts["calls_canceled"] = len(counts.pop("calls_to_cancel"))
        return counts


def quiet_seconds() -> float:
    """How long after the sweeps resume from a stop no lease is reclaimed: a heartbeat and
    a retry's backoff, so that every live worker's renewal has landed first."""
    return get_settings().worker.heartbeat_seconds + DATABASE_BACKOFF_SECONDS


def worker_name() -> str:
    """This process, as the sweep and the admin name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def sweep(*, worker: str) -> SweepResult | None:
    """One pass, if this period's sweep is still to be taken; ``None`` if another process has it."""
    settings = get_settings().worker
    # A sweep still "running" after a lease is taken to have died with its worker: the
    # next one must not wait longer for it than a dead worker's jobs wait for theirs.
    state = SweepState.objects.begin(
        worker=worker,
        period=settings.sweep_interval_seconds * 0.8,
        stale_after=max(settings.lease_seconds, 2 * settings.sweep_interval_seconds),
        stopped_after=2 * settings.sweep_interval_seconds,
        quiet_for=quiet_seconds(),
    )
    if state is None:
        return None
    result = SweepResult(quiet=state.quiet)
    try:
        if state.quiet_began:
            # After an outage, or just as likely a time when no worker ran: not a warning.
            logger.info(
                "No sweep ran for over %ss: expired leases are left %ss to their workers' renewals first",
                settings.sweep_interval_seconds * 2,
                quiet_seconds(),
            )
        if not state.quiet:
            _reclaim(result)
        _expire(result)
        # Batches whose last jobs just ended: their completion messages are due now.
        result.deliveries_to_send += [delivery.id for delivery in complete_done_batches(limit=settings.sweep_limit)]
        _purge(result)
    finally:
        SweepState.objects.filter(pk=state.pk, worker=worker).update(finished_at=Now(), last_result=result.summary())
    return result


def _reclaim(result: SweepResult) -> None:
    worker = get_settings().worker
    with transaction.atomic():
        requeued, failed = Job.objects.reclaim_expired(max_attempts=worker.max_attempts, limit=worker.sweep_limit)
        notices = QueueDelivery.objects.bulk_create(deliveries_for(failed, timezone.now(), sent_by_caller=False))
    result.reclaimed, result.lost = len(requeued), len(failed)
    result.jobs_to_wake += [job.id for job in requeued]
    result.deliveries_to_send += [delivery.id for delivery in notices]
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
        notices = QueueDelivery.objects.bulk_create(deliveries_for(expired, timezone.now(), sent_by_caller=False))
    result.expired = len(expired)
    result.deliveries_to_send += [delivery.id for delivery in notices]
    result.calls_to_cancel += [job.modal_call_id for job in expired if job.modal_call_id]


def _purge(result: SweepResult) -> None:
    ttl = get_config().app_settings.async_config.result_ttl
    if ttl is None:
        return
    limit = get_settings().worker.sweep_limit
    for _ in range(PURGE_CHUNKS):
        purged = Job.objects.purge_finished(older_than=ttl, limit=limit)
        result.purged += purged
        if purged < limit:
            break
    Batch.objects.purge_emptied(older_than=ttl, limit=limit)


async def sweep_once(*, worker: str | None = None, thread: DatabaseThread | None = None) -> SweepResult | None:
    """Run the sweep (if it is this process's turn) and nudge the workers about what it made due.

    ``thread``: where its statements run (default: Django's sync thread, as in tests).
    """
    result = await run_db(sweep, worker=worker or worker_name(), thread=thread)
    if result is not None:
        metrics.sweep_actions(result.summary())
        waker = get_waker()
        if result.jobs_to_wake:
            await waker.awake_jobs(result.jobs_to_wake)
        if result.deliveries_to_send:
            await waker.awake_deliveries(result.deliveries_to_send)
        if result.calls_to_cancel:
            await acancel_calls(result.calls_to_cancel)
    return result


async def run_sweeper() -> None:
    """Sweep forever, every ``WORKER["SWEEP_INTERVAL_SECONDS"]`` (jittered so processes spread
    out), on a connection of its own: a long pass never holds up this worker's batches."""
    interval = get_settings().worker.sweep_interval_seconds
    name = worker_name()
    await asyncio.sleep(random.uniform(0, interval))
    while True:
        try:
            await sweep_once(worker=name, thread=SWEEPS)
        except Exception:
            logger.exception("Sweep failed; trying again in %ss", interval)
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))
