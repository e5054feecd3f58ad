"""The TaskIQ side: the tasks workers run, and the waker that sends them.

Tasks take ids, never objects, and are idempotent: a duplicate message finds its job
already claimed (or its delivery already sent) and does nothing. A message whose id is
not an id at all is dropped with a warning, alone: its batchmates run as usual.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from taskiq.brokers.shared_broker import async_shared_broker
from taskiq.decor import AsyncTaskiqDecoratedTask

from .. import broker
from ..jobs.wakeups import Ids
from ..models import Job, QueueDelivery
from .database import run_db
from .engine import get_engine

__all__ = ["BrokerWaker", "deliver", "run_job", "run_jobs"]

logger = logging.getLogger(__name__)

# A wake-up the broker has not taken by then is given up: its jobs are marked unwoken
# and the sweep sends it again. Submits never wait for it.
WAKE_TIMEOUT_SECONDS = 5.0


def _valid(kind: str, value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        logger.warning("Ignoring a %s message for %r: not an id", kind, value)
        return False
    return True


@async_shared_broker.task(task_name=broker.RUN_JOB)
async def run_job(job_id: str) -> None:
    """Run the job's inference, store the outcome, and send it to its queue."""
    if _valid("run_job", job_id):
        await get_engine().run_jobs([job_id])


@async_shared_broker.task(task_name=broker.RUN_JOBS)
async def run_jobs(job_ids: list[str]) -> None:
    """``run_job`` for each of ``job_ids``: the run_job messages a worker read together."""
    valid = [job_id for job_id in job_ids if _valid("run_job", job_id)]
    if valid:
        await get_engine().run_jobs(valid)


@async_shared_broker.task(task_name="modalkit.deliver")
async def deliver(delivery_id: str) -> None:
    """Send a delivery that is due again: a retry, a redelivery, a cancellation notice."""
    if _valid("deliver", delivery_id):
        await get_engine().deliver(delivery_id)


class BrokerWaker:
    """Wakes workers through the broker (see :mod:`modalkit_django.wakeups`).

    A failed wake-up is logged once per outage, not once per job, and leaves its jobs
    marked unwoken so that the next sweep after the broker's return wakes them.
    """

    def __init__(self) -> None:
        # The broker failing now, and how many wake-ups it refused: one outage, one log line.
        self._failing: object = None
        self._failures = 0

    def wake_jobs(self, job_ids: Ids) -> None:
        if job_ids:
            broker.submit(self.awake_jobs(job_ids))

    async def awake_jobs(self, job_ids: Ids) -> None:
        await self._send(run_job, job_ids, Job.objects.mark_unwoken)

    def wake_deliveries(self, delivery_ids: Ids) -> None:
        if delivery_ids:
            broker.submit(self.awake_deliveries(delivery_ids))

    async def awake_deliveries(self, delivery_ids: Ids) -> None:
        await self._send(deliver, delivery_ids, QueueDelivery.objects.mark_due)

    async def broker_epoch(self) -> str:
        return await broker.epoch()

    async def _send(
        self, task: AsyncTaskiqDecoratedTask[Any, Any], ids: Sequence[Any], on_failure: Callable[[Ids], Any]
    ) -> None:
        try:
            async with asyncio.timeout(WAKE_TIMEOUT_SECONDS):
                await broker.akick_many(task, [str(id) for id in ids])
        except Exception as exc:
            if self._failing is not broker.get_broker():
                self._failing, self._failures = broker.get_broker(), 0
                logger.error(
                    "Could not wake workers (%s: %s); the work is kept, the sweep wakes them once the broker is back",
                    type(exc).__name__,
                    exc,
                )
            self._failures += 1
            await run_db(on_failure, ids)
        else:
            if self._failing is not None:
                logger.warning("The broker takes wake-ups again, after %d failed", self._failures)
                self._failing, self._failures = None, 0
