"""Where the worker runs its database work, and how it waits out outages.

Three threads, each with its own persistent connection, so that no kind of work queues
behind another: Django's sync thread for the hot path (claims, finishes, sends
recorded), :data:`LEASES` for lease renewals, which must never wait behind a batch or
a sweep, and :data:`SWEEPS` for the sweep's longer passes. When the database goes away,
a step waits for it (with backoff, up to ``WORKER["DATABASE_RETRY_SECONDS"]``) instead
of abandoning its batch.

A step retried after its connection broke may have been carried out already (the reply
was lost, not the statement): a step that must not run twice passes ``retry_with``, a
function that finds out what the first try did before doing anything again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, connections

from ..conf import get_settings

__all__ = ["DATABASE_GONE", "LEASES", "SWEEPS", "DatabaseThread", "run_db"]

logger = logging.getLogger(__name__)

R = TypeVar("R")

# How the database says it is gone (restarting, unreachable): worth waiting for.
DATABASE_GONE = (OperationalError, InterfaceError)


def _refresh_connections() -> None:
    """Django's ``close_old_connections()`` for a worker, before each step.

    Closes a connection that broke (the database restarted) so the step reconnects, but
    never one in the middle of a transaction (as inside a test's transaction).
    """
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


def _fresh(function: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    _refresh_connections()
    return function(*args, **kwargs)


class DatabaseThread:
    """One thread of this process's own, and so one connection, for one kind of work."""

    # When set, the work runs on Django's sync thread after all: the seam for tests that
    # run inside one transaction, which only that thread's connection can see.
    on_sync_thread = False

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, function: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        if self.on_sync_thread:
            return await sync_to_async(_fresh, thread_sensitive=True)(function, *args, **kwargs)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"modalkit-{self.name}")
        call = functools.partial(_fresh, function, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def close(self) -> None:
        """Close the thread's connection and let the thread go (at a worker's shutdown)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, connections.close_all)
            executor.shutdown(wait=False)


LEASES = DatabaseThread("leases")
SWEEPS = DatabaseThread("sweeps")


async def run_db(
    function: Callable[..., R],
    *args: Any,
    thread: DatabaseThread | None = None,
    retry_with: Callable[..., R] | None = None,
    **kwargs: Any,
) -> R:
    """Run ``function`` on ``thread`` (default: Django's sync thread); while the database is
    gone, wait and try again, with ``retry_with`` if given."""
    deadline = time.monotonic() + get_settings().worker.database_retry_seconds
    delay = 0.1
    attempt = function
    while True:
        try:
            if thread is None:
                return await sync_to_async(_fresh, thread_sensitive=True)(attempt, *args, **kwargs)
            return await thread.run(attempt, *args, **kwargs)
        except DATABASE_GONE as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("The database is unavailable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            attempt = retry_with or function
