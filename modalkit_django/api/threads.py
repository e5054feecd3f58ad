"""Where async code does its synchronous database work: a bounded pool of threads.

Each call gets a healthy connection (from Django's pool, or a persistent one) and gives it
back as soon as it returns, as a request would: a coroutine that goes on to wait for
something else (the intake, the broker) holds no connection meanwhile, and however many
requests are in flight, at most ``MODALKIT["API"]["DATABASE_THREADS"]`` connections are
in use for them. Django's ``sync_to_async`` would run the call on the request's own
thread (started and joined for each request) or, outside one, on a single shared thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connections

from ..conf import get_settings

__all__ = ["close_connections", "run_sync"]

R = TypeVar("R")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            size = get_settings().api.database_threads
            _executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="modalkit-db")
        return _executor


def _with_fresh_connection(function: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    close_old_connections()
    try:
        return function(*args, **kwargs)
    finally:
        close_old_connections()


async def run_sync(function: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """Run ``function(*args, **kwargs)`` on one of the database threads."""
    call = sync_to_async(_with_fresh_connection, thread_sensitive=False, executor=_pool())
    return await call(function, *args, **kwargs)


def close_connections() -> None:
    """Close every thread's connection (at shutdown, and after tests)."""
    global _executor
    with _lock:
        executor, _executor = _executor, None
    if executor is None:
        return
    # Connections belong to threads: one call per thread, held at a barrier so that no
    # thread takes two.
    size = get_settings().api.database_threads
    barrier = threading.Barrier(size)

    def close() -> None:
        barrier.wait(timeout=10)
        connections.close_all()

    for closing in [executor.submit(close) for _ in range(size)]:
        closing.result()
    executor.shutdown(wait=True)
