"""Group commit for submits: jobs submitted together share one INSERT and one wake-up.

Under load, an async view awaiting its own INSERT pays a thread hop, a pooled connection
and a round trip to PostgreSQL per request, and a round trip to the broker after it;
throughput then collapses as clients are added. Here each event loop (one per ASGI
server process) keeps one :class:`Intake`: a submit hands its job row over and waits;
whatever arrived while the previous INSERT was running goes in the next one, so at one
client a job is inserted at once, and at many clients the rows of many requests go in
one statement, on one database thread, with one wake-up for the lot. Nothing waits
for the broker: the wake-up is sent after the response, and a failed one is the
sweep's to repeat.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DEFAULT_DB_ALIAS, connections

from ..jobs.scheduling import Schedule
from ..jobs.submit import committed, new_job, submit_job
from ..models import Job
from .threads import run_sync

__all__ = ["Intake", "asubmit_job", "close_connections", "get_intake"]

# Rows per INSERT at most; a larger backlog goes in several, back to back.
MAX_BATCH = 500

# One thread for every intake's database work: one connection (or pool checkout) per flush.
_database_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modalkit-intake")


def _insert(jobs: Sequence[Job]) -> None:
    # The intake's one thread keeps its connection (one per process, even with a pool):
    # taking one from the pool for every batch would cost a health check each time.
    # A connection that failed is replaced before the next batch.
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.errors_occurred and not connection.is_usable():
        connection.close()
    Job.objects.bulk_create(jobs)


def close_connections() -> None:
    """Close the intake thread's database connection (at shutdown, and after tests)."""
    _database_thread.submit(connections.close_all).result()


class Intake:
    """Inserts the jobs handed to :meth:`submit` in batches; one per event loop."""

    def __init__(self) -> None:
        self._pending: list[tuple[Job, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, job: Job) -> Job:
        """Store ``job`` (queued, fully formed, not yet saved); return it once committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((job, done))
        if self._flusher is None or self._flusher.done():
            # An empty context: the flusher outlives the request that started it.
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), context=contextvars.Context())
        await done
        return job

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            jobs = [job for job, _ in batch]
            try:
                await sync_to_async(_insert, thread_sensitive=False, executor=_database_thread)(jobs)
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
            committed(jobs)


_intakes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Intake] = weakref.WeakKeyDictionary()


def get_intake() -> Intake:
    """The running event loop's intake."""
    loop = asyncio.get_running_loop()
    intake = _intakes.get(loop)
    if intake is None:
        intake = _intakes[loop] = Intake()
    return intake


async def asubmit_job(
    *,
    message: dict[str, Any],
    model_name: str | None = None,
    success_queue: str = "",
    failure_queue: str = "",
    meta: dict[str, Any] | None = None,
    owner: Any = None,
    api_key_prefix: str = "",
    idempotency_key: str | None = None,
    schedule: Schedule | None = None,
) -> Job:
    """:func:`submit_job` for async code: jobs submitted together are inserted together.

    A submit with an ``idempotency_key`` checks for its first job, so it takes the
    one-by-one path.
    """
    if idempotency_key:
        return await run_sync(
            submit_job,
            message=message,
            model_name=model_name,
            success_queue=success_queue,
            failure_queue=failure_queue,
            meta=meta,
            owner=owner,
            api_key_prefix=api_key_prefix,
            idempotency_key=idempotency_key,
            schedule=schedule,
        )
    job = new_job(message, model_name, success_queue, failure_queue, meta, owner, api_key_prefix, None, schedule)
    return await get_intake().submit(job)
