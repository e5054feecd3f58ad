"""Gathering the job ids a worker receives into batches.

Each ``run_job`` (or ``run_jobs``) message waits on a :class:`JobBatcher`, which gathers
the jobs whose messages arrived together and hands them to one call of its ``process``
function: one claim, one model call per model, one finishing transaction for the lot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

__all__ = ["JobBatcher"]

logger = logging.getLogger(__name__)


class JobBatcher:
    """Collects job ids and processes them in batches.

    At most ``in_flight`` batches run at once; while they do, new ids wait and the
    next batch grows, up to ``batch_size``. A batch that is not full waits ``wait``
    seconds for company before it goes. Each caller waits for the batches of its own
    ids, so the broker acknowledges a message only once its jobs are stored.
    """

    def __init__(
        self,
        process: Callable[[Sequence[str]], Awaitable[None]],
        *,
        batch_size: int,
        in_flight: int = 2,
        wait: float = 0.002,
    ) -> None:
        self.process = process
        self.batch_size = batch_size
        self.wait = wait
        self._waiting: list[tuple[str, asyncio.Future[None]]] = []
        self._slots = asyncio.Semaphore(in_flight)
        self._pump: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def run(self, job_ids: Sequence[str]) -> None:
        """Process ``job_ids``; raises the first error of a batch they were in, once all ran."""
        loop = asyncio.get_running_loop()
        waiting = [(job_id, loop.create_future()) for job_id in job_ids]
        self._waiting += waiting
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._form_batches())
        await asyncio.wait([done for _, done in waiting])
        # Each read, so that asyncio does not log the others as never retrieved.
        errors = [error for _, done in waiting if (error := done.exception()) is not None]
        if errors:
            raise errors[0]

    async def _form_batches(self) -> None:
        while self._waiting:
            await self._slots.acquire()
            if len(self._waiting) < self.batch_size:
                await asyncio.sleep(self.wait)
            batch, self._waiting = self._waiting[: self.batch_size], self._waiting[self.batch_size :]
            task = asyncio.create_task(self._process(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _process(self, batch: list[tuple[str, asyncio.Future[None]]]) -> None:
        try:
            await self.process([job_id for job_id, _ in batch])
        except Exception as exc:
            # The jobs stay queued or leased in the database; the sweep recovers them.
            logger.exception("Processing a batch of %d jobs failed", len(batch))
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
        else:
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
        finally:
            self._slots.release()
