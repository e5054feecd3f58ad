"""Worker heartbeats: each worker process's row in ``WorkerHeartbeat``, kept fresh while it runs.

::

    worker start ─▶ upsert the row (host, pid, version)
                    every WORKER["HEARTBEAT_SECONDS"]: one UPDATE (last beat, jobs done,
                    deliveries sent, jobs in flight, read from this loop's Engine)
    clean stop   ─▶ stopped_at;  killed ─▶ the row stops beating (dead: ``WORKER.stale_after_seconds``)

Started by the worker hooks (:mod:`.worker`), so a TaskIQ worker and the embedded
broker's loop each have one. The beats run in a task of their own: a database outage
delays them (``run_db`` waits for the database) and is logged, but never stops the
worker or its jobs. Rows of workers gone for more than a day are pruned by the
survivors.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import secrets
import socket
from typing import Any

from django.db.models.functions import Now

from .. import __version__
from ..conf import get_settings
from ..models import WorkerHeartbeat
from .database import run_db
from .engine import Engine, get_engine

__all__ = ["PRUNE_AFTER_SECONDS", "Heartbeat"]

logger = logging.getLogger(__name__)

# Rows of workers dead or stopped for longer than this are deleted.
PRUNE_AFTER_SECONDS = 86400.0
# Beats between prunes: one DELETE per hour or so per worker, not one per beat.
PRUNE_EVERY_BEATS = 360
# How long a clean shutdown waits to record itself.
STOP_TIMEOUT_SECONDS = 5.0


def _version() -> str:
    try:
        return importlib.metadata.version("modalkit-django")
    except importlib.metadata.PackageNotFoundError:  # a source checkout, not installed
        return __version__


class Heartbeat:
    """One event loop's worker row: started by :meth:`start`, marked stopped by :meth:`stop`."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        # The random part tells apart two workers that reused a pid (containers, restarts).
        self.name = f"{self.hostname}:{self.pid}:{secrets.token_hex(4)}"
        self.engine = engine
        self.beats = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start beating, on the running loop; returns at once (the first write is the task's)."""
        if self.engine is None:
            self.engine = get_engine()
        self._task = asyncio.create_task(self._run(), name=f"modalkit-heartbeat:{self.name}")

    async def stop(self) -> None:
        """Stop beating and record a clean shutdown, with the final counts."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            # Bounded: a worker shutting down during a database outage must not wait a minute for it.
            async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                await run_db(self._write, stopped=True)
        except Exception:
            logger.exception("Could not record the stop of worker %s", self.name)

    async def _run(self) -> None:
        interval = get_settings().worker.heartbeat_seconds
        while True:
            try:
                await self.beat()
            except Exception:
                # The database is gone for longer than run_db waits: the next beat tries again.
                logger.exception("Worker %s could not record its heartbeat", self.name)
            await asyncio.sleep(interval)

    async def beat(self) -> None:
        """Write this worker's row once (created on the first beat), and prune now and then."""
        await run_db(self._write, stopped=False)
        if self.beats % PRUNE_EVERY_BEATS == 0:
            await run_db(WorkerHeartbeat.objects.prune, older_than=PRUNE_AFTER_SECONDS)
        self.beats += 1

    def counts(self) -> dict[str, int]:
        engine = self.engine
        if engine is None:
            return {"jobs_done": 0, "deliveries_sent": 0, "in_flight": 0}
        return {"jobs_done": engine.jobs_done, "deliveries_sent": engine.deliveries_sent, "in_flight": engine.in_flight}

    def _write(self, *, stopped: bool) -> None:
        # The database's clock: liveness is judged by it, whatever this host's says.
        fields: dict[str, Any] = {"last_beat_at": Now(), **self.counts()}
        if stopped:
            fields["stopped_at"] = Now()
        if WorkerHeartbeat.objects.filter(name=self.name).update(**fields):
            return
        # The first beat, or the row was pruned while this worker was unreachable.
        WorkerHeartbeat.objects.update_or_create(
            name=self.name,
            defaults=fields,
            create_defaults={
                **fields,
                "hostname": self.hostname[:255],
                "pid": self.pid,
                "started_at": Now(),
                "version": _version()[:32],
            },
        )
