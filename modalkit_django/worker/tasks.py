"""The TaskIQ side: the wake-ups workers receive, and the waker that sends them.

A wake-up is a nudge, not an order: whatever job or delivery it names, the worker that
receives it looks for all the work that is runnable now (:class:`.engine.Engine`), and
idle workers look every ``WORKER["POLL_INTERVAL_SECONDS"]`` anyway, so a wake-up lost,
duplicated or malformed changes when work starts by a moment at most, never whether.
The wire format is the one workers have always read: ``run_job(id)``, ``run_jobs([ids])``
and ``deliver(id)``, so workers of an earlier version on the same broker keep working
during a rolling upgrade (they act on the ids).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from taskiq.brokers.shared_broker import async_shared_broker
from taskiq.decor import AsyncTaskiqDecoratedTask

from .. import broker
from ..jobs.wakeups import Ids
from .engine import get_engine

__all__ = ["BrokerWaker", "deliver", "run_job", "run_jobs"]

logger = logging.getLogger(__name__)

# A wake-up the broker has not taken by then is given up: idle workers find the work at
# their next poll. Submits never wait for it.
WAKE_TIMEOUT_SECONDS = 5.0
# Ids per wake-up message at most: the ids only help workers of earlier versions.
WAKE_CHUNK = 500


@async_shared_broker.task(task_name=broker.RUN_JOB)
async def run_job(job_id: Any) -> None:
    """Look for runnable jobs now (sent for one job)."""
    get_engine().nudge()


@async_shared_broker.task(task_name=broker.RUN_JOBS)
async def run_jobs(job_ids: Any) -> None:
    """Look for runnable jobs now (sent for the jobs of a submit, a batch, a bulk action)."""
    get_engine().nudge()


@async_shared_broker.task(task_name="modalkit.deliver")
async def deliver(delivery_id: Any) -> None:
    """Look for due deliveries now (sent for a redelivery or a notice)."""
    get_engine().nudge_deliveries()


class BrokerWaker:
    """Wakes workers through the broker (see :mod:`modalkit_django.wakeups`).

    A failed wake-up is logged once per outage, not once per job; the work it was for
    is in the database, where idle workers look for it at every poll.
    """

    def __init__(self) -> None:
        # The broker failing now, and how many wake-ups it refused: one outage, one log line.
        self._failing: object = None
        self._failures = 0

    def wake_jobs(self, job_ids: Ids) -> None:
        # Where no worker can hear it (the embedded broker, outside the web process), the
        # embedded worker finds the work at its next poll.
        if job_ids and broker.reaches_workers():
            broker.submit(self.awake_jobs(job_ids))

    async def awake_jobs(self, job_ids: Ids) -> None:
        ids = [str(job_id) for job_id in job_ids]
        await self._send(run_jobs, [ids[start : start + WAKE_CHUNK] for start in range(0, len(ids), WAKE_CHUNK)])

    def wake_deliveries(self, delivery_ids: Ids) -> None:
        if delivery_ids and broker.reaches_workers():
            broker.submit(self.awake_deliveries(delivery_ids))

    async def awake_deliveries(self, delivery_ids: Ids) -> None:
        await self._send(deliver, [str(delivery_ids[0])])

    async def _send(self, task: AsyncTaskiqDecoratedTask[Any, Any], args: Sequence[Any]) -> None:
        try:
            async with asyncio.timeout(WAKE_TIMEOUT_SECONDS):
                await broker.akick_many(task, args)
        except Exception as exc:
            if self._failing is not broker.get_broker():
                self._failing, self._failures = broker.get_broker(), 0
                logger.error(
                    "Could not wake workers (%s: %s); the work is kept, idle workers find it at their next poll",
                    type(exc).__name__,
                    exc,
                )
            self._failures += 1
        else:
            if self._failing is not None:
                logger.warning("The broker takes wake-ups again, after %d failed", self._failures)
                self._failing, self._failures = None, 0
