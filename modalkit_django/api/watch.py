"""One poll for every job this process streams events of: the database cost of watchers.

Each event stream (:mod:`.events`) could read its job's row every half second; a hundred
watchers would then cost the database two hundred queries a second. Instead, one task per
event loop reads every watched job's status, progress and partial output count in one
query per :data:`POLL_SECONDS`, and wakes the streams whose job changed; a stream reads
partial outputs itself, only when there are new ones. The reads run on the API's database
threads (:mod:`modalkit_django.threads`), which give their connection back after each:
no watcher holds a connection between polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Any

from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError

from ..models import Job
from .threads import run_sync

__all__ = ["POLL_SECONDS", "Watched", "read_jobs", "watching"]

logger = logging.getLogger(__name__)

# How often the watched jobs' rows are read.
POLL_SECONDS = 0.5

_FIELDS = ("id", "status", "runs", "progress", "progress_message", "output_count")


class Watched:
    """One job's latest row, as the poll last read it (``None``: deleted, or not read yet)."""

    def __init__(self) -> None:
        self.row: dict[str, Any] | None = None
        self.read = False  # the poll has read it at least once
        self.version = 0
        self.watchers = 0
        self._changed = asyncio.Event()

    def update(self, row: dict[str, Any] | None) -> None:
        if self.read and row == self.row:
            return
        self.row, self.read = row, True
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, since: int, timeout: float) -> bool:
        """Wait until ``version`` is past ``since`` (up to ``timeout`` s); whether it is."""
        if self.version > since:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        return self.version > since


def read_jobs(job_ids: list[uuid.UUID], using: str = DEFAULT_DB_ALIAS) -> dict[uuid.UUID, dict[str, Any]]:
    """Each job's status, run, progress, message and its run's number of partial outputs, by id."""
    rows = Job.objects.using(using).filter(id__in=job_ids).values(*_FIELDS)
    return {row.pop("id"): row for row in rows}


class _Poller:
    """The event loop's watched jobs, and the task that reads them."""

    def __init__(self) -> None:
        self.jobs: dict[uuid.UUID, Watched] = {}
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while self.jobs:
            job_ids = list(self.jobs)
            try:
                rows = await run_sync(read_jobs, job_ids)
            except (OperationalError, InterfaceError) as exc:
                # The database is away (a restart): the streams wait; the next poll tries again.
                logger.warning("Reading %d watched jobs failed (%s); retrying", len(job_ids), exc)
            except Exception:
                # Kept alive whatever happens: every stream of this process waits on it.
                logger.exception("Reading %d watched jobs failed; retrying", len(job_ids))
            else:
                for job_id in job_ids:
                    if (watched := self.jobs.get(job_id)) is not None:
                        watched.update(rows.get(job_id))
            await asyncio.sleep(POLL_SECONDS)


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Poller] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def watching(job_id: uuid.UUID) -> AsyncIterator[Watched]:
    """Watch ``job_id`` for as long as the block runs."""
    loop = asyncio.get_running_loop()
    poller = _pollers.setdefault(loop, _Poller())
    watched = poller.jobs.setdefault(job_id, Watched())
    watched.watchers += 1
    if poller.task is None or poller.task.done():
        poller.task = loop.create_task(poller.run(), name="modalkit-job-events")
    try:
        yield watched
    finally:
        watched.watchers -= 1
        if not watched.watchers:
            del poller.jobs[job_id]
