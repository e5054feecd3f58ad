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
import json
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import AsyncToSync, sync_to_async
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connections

from ..jobs.scheduling import Schedule
from ..jobs.submit import committed, new_job, submit_job
from ..models import Job
from .threads import run_sync

__all__ = ["Intake", "asubmit_job", "close_connections", "get_intake"]

# Rows per INSERT at most, and their bytes (their JSON) at most: a larger backlog goes in
# several, back to back, so one statement never carries hundreds of megabytes.
MAX_BATCH = 500
MAX_BATCH_BYTES = 8 * 1024 * 1024

# The database is away (not this batch's fault): every submit of the batch fails alike.
DATABASE_GONE = (OperationalError, InterfaceError)

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
        self._pending: list[tuple[Job, int, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, job: Job, *, size: int | None = None) -> Job:
        """Store ``job`` (queued, fully formed, not yet saved); return it once committed.

        ``size``: about how many bytes its row holds (a request's body length), counted
        against a flush's byte cap; measured from its JSON if not given.
        """
        if size is None:
            size = len(json.dumps([job.message, job.meta], default=str))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((job, size, done))
        if self._flusher is None or self._flusher.done():
            # An empty context: the flusher outlives the request that started it.
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), context=contextvars.Context())
        await done
        return job

    def _next_batch(self) -> list[tuple[Job, int, asyncio.Future[None]]]:
        taken, total = 0, 0
        for _, size, _ in self._pending[:MAX_BATCH]:
            if taken and total + size > MAX_BATCH_BYTES:
                break
            taken, total = taken + 1, total + size
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch

    async def _flush(self) -> None:
        while self._pending:
            batch = self._next_batch()
            jobs = [job for job, _, _ in batch]
            try:
                await _run(_insert, jobs)
            except DATABASE_GONE as exc:
                _settle([done for _, _, done in batch], exc)
                continue
            except Exception:
                if len(batch) == 1:
                    raise
                # One row the database (or its JSON encoder) refuses must fail alone, not
                # every submit it happened to share a statement with.
                await self._one_by_one(batch)
                continue
            _settle([done for _, _, done in batch], None)
            committed(jobs)

    async def _one_by_one(self, batch: list[tuple[Job, int, asyncio.Future[None]]]) -> None:
        stored = []
        for job, _, done in batch:
            try:
                await _run(_insert, [job])
            except Exception as exc:
                _settle([done], exc)
            else:
                _settle([done], None)
                stored.append(job)
        committed(stored)


async def _run(function: Any, *args: Any) -> None:
    await sync_to_async(function, thread_sensitive=False, executor=_database_thread)(*args)


def _settle(waiting: Sequence[asyncio.Future[None]], error: BaseException | None) -> None:
    for done in waiting:
        if done.done():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


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
    """:func:`submit_job` for async code, with the same transactional meaning.

    Called from synchronous code (through ``async_to_sync``), it is :func:`submit_job`
    run on the caller's thread: inside the caller's ``transaction.atomic()`` it joins
    that transaction (the job is there only if it commits; workers are woken once it
    does). Called from async code, which holds no transaction, it commits on its own,
    as a statement outside a transaction does: jobs submitted together are inserted
    together (one statement, one wake-up). A submit with an ``idempotency_key`` checks
    for its first job, so it takes the one-by-one path.
    """
    fields = {
        "message": message, "model_name": model_name, "success_queue": success_queue,
        "failure_queue": failure_queue, "meta": meta, "owner": owner, "api_key_prefix": api_key_prefix,
        "idempotency_key": idempotency_key, "schedule": schedule,
    }  # fmt: skip
    if getattr(AsyncToSync.executors, "current", None) is not None:
        # Thread-sensitive: on the calling thread, whose connection holds its transaction.
        return await sync_to_async(submit_job, thread_sensitive=True)(**fields)
    if idempotency_key:
        return await run_sync(submit_job, **fields)
    job = new_job(message, model_name, success_queue, failure_queue, meta, owner, api_key_prefix, None, schedule)
    return await get_intake().submit(job)
