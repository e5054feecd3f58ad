"""What a worker process (or the embedded broker's loop) does when it starts and stops.

Registered on the broker by the app (``apps.py``): at start, the task modules of
``MODALKIT["TASK_MODULES"]`` are imported, the sweeper starts and the engine starts
looking for work; at shutdown, it stops looking, the batches and first sends in flight
are waited for (a while), then every backend and connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from asgiref.sync import sync_to_async
from django.db import connections
from taskiq import TaskiqState

from ..clients import inference_backends
from ..conf import get_settings, import_task_modules
from ..metrics import process_exited
from ..queues import queues
from .database import LEASES, SWEEPS
from .engine import get_engine
from .heartbeats import Heartbeat
from .sweeper import run_sweeper

__all__ = ["on_shutdown", "on_startup"]

logger = logging.getLogger(__name__)

# How long shutdown waits for the batches and first sends still in flight.
DRAIN_SECONDS = 10.0


async def on_startup(state: TaskiqState) -> None:
    # First, so that a module that fails to import leaves no half-started loop behind.
    import_task_modules()
    state.modalkit_sweeper = asyncio.create_task(run_sweeper())
    get_engine().start()
    if get_settings().worker.record_heartbeats:
        state.modalkit_heartbeat = Heartbeat()
        state.modalkit_heartbeat.start()
    logger.info("modalkit worker started; sweeping every %ss", get_settings().worker.sweep_interval_seconds)


async def on_shutdown(state: TaskiqState) -> None:
    sweeper = getattr(state, "modalkit_sweeper", None)
    if sweeper is not None:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
    # Batches running get the drain's time to finish; the jobs of those that do not are
    # queued again at once, rather than after their lease.
    await get_engine().stop(DRAIN_SECONDS)
    heartbeat = getattr(state, "modalkit_heartbeat", None)
    if heartbeat is not None:
        await heartbeat.stop()  # after the drain, so the final counts include its sends
    process_exited()
    await queues.aclose_all()
    await inference_backends.aclose_all()
    # The connections of the threads where this worker's statements ran.
    await LEASES.close()
    await SWEEPS.close()
    await sync_to_async(connections.close_all, thread_sensitive=True)()
