"""Where the worker runs its database work: Django's sync thread, waiting out outages.

Each worker process keeps one persistent connection on that thread; when the database
goes away, a step waits for it (with backoff, up to ``WORKER["DATABASE_RETRY_SECONDS"]``)
instead of abandoning its batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, connections

from ..conf import get_settings

__all__ = ["DATABASE_GONE", "run_db"]

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


async def run_db(function: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """Run ``function`` on Django's sync thread; while the database is gone, wait and retry."""
    deadline = time.monotonic() + get_settings().worker.database_retry_seconds
    delay = 0.1
    while True:
        try:
            return await sync_to_async(_fresh, thread_sensitive=True)(function, *args, **kwargs)
        except DATABASE_GONE as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("The database is unavailable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
