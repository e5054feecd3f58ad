"""A batch's inference as detached calls (Modal's ``.spawn``), which outlive their worker.

::

    claimed job ─┬─ no call yet ─▶ spawn ─▶ store the call ids (one statement) ─▶ wait ─▶ prediction
                 └─ a call id (its last worker died) ─▶ re-attach: wait ─┬─▶ prediction
                                                                        └─ call lost ─▶ spawn again, once
    past the deadline ─▶ InferenceTimeout, and the call is cancelled

The ids are stored before the worker waits, so a worker lost meanwhile costs no second
inference: the next one to claim the job re-attaches to the same call. Only a call that
is gone (its output expired, Modal does not know it, it ended without an output) is
started again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from ..clients.base import DetachedCalls, Prediction
from ..exceptions import InferenceCallLost, InferenceError, InferenceTimeout

if TYPE_CHECKING:
    from ..models import Job

__all__ = ["predict_detached"]

logger = logging.getLogger(__name__)

# Stores the ``modal_call_id`` set on each job; returns the ids of those whose lease still holds.
Store = Callable[[list["Job"]], Awaitable[set[uuid.UUID]]]


async def predict_detached(
    backend: DetachedCalls, jobs: Sequence[Job], *, deadline: float, store: Store
) -> list[Prediction]:
    """One prediction per job, in order, all within ``deadline`` seconds."""
    run = _Run(backend, store, deadline)
    reattached = [job for job in jobs if job.modal_call_id]
    if reattached:
        logger.info("Re-attaching to the Modal calls of %d jobs whose worker was lost", len(reattached))
    started = await run.start([job for job in jobs if not job.modal_call_id])
    lost = await run.wait([*started, *reattached])
    again = [job for job in lost if job in reattached]
    if again:
        logger.warning("%d Modal calls of lost workers are gone; calling again", len(again))
        await run.wait(await run.start(again))
    if run.overdue:
        await backend.acancel_calls(run.overdue)
    return [run.outcomes[job.id] for job in jobs]


class _Run:
    """One batch's calls: their outcomes so far, and the calls past the deadline."""

    def __init__(self, backend: DetachedCalls, store: Store, deadline: float) -> None:
        self.backend = backend
        self.store = store
        self.deadline = deadline
        self.ends_at = asyncio.get_running_loop().time() + deadline
        self.outcomes: dict[uuid.UUID, Prediction] = {}
        self.overdue: list[str] = []

    def remaining(self) -> float:
        return max(self.ends_at - asyncio.get_running_loop().time(), 0.0)

    def timed_out(self) -> InferenceTimeout:
        return InferenceTimeout(f"Inference did not finish within {self.deadline:g} s")

    async def start(self, jobs: list[Job]) -> list[Job]:
        """Spawn each job's call, all at once (Modal batches them), and store the ids.

        Returns the jobs whose call is stored; a job reclaimed or canceled meanwhile has
        its new call cancelled, as nobody would wait for it.
        """
        spawned = await asyncio.gather(*(self._spawn(job) for job in jobs))
        started = [job for job, ok in zip(jobs, spawned, strict=True) if ok]
        if not started:
            return []
        held = await self.store(started)
        orphans = [job for job in started if job.id not in held]
        for job in orphans:
            self.outcomes[job.id] = InferenceCallLost("The job's lease ended before its Modal call was stored")
        if orphans:
            await self.backend.acancel_calls([job.modal_call_id for job in orphans if job.modal_call_id])
        return [job for job in started if job.id in held]

    async def _spawn(self, job: Job) -> bool:
        job.modal_call_id = None
        try:
            async with asyncio.timeout(self.remaining()):
                job.modal_call_id = await self.backend.aspawn(job.model_name, job.message)
        except TimeoutError:
            self.outcomes[job.id] = self.timed_out()
        except InferenceError as exc:
            self.outcomes[job.id] = exc
        except Exception as exc:
            logger.exception("Starting a call on %s failed", type(self.backend).__name__)
            self.outcomes[job.id] = InferenceError(str(exc), error_type=type(exc).__name__)
        return job.modal_call_id is not None

    async def wait(self, jobs: list[Job]) -> list[Job]:
        """Wait for each job's call until the deadline; returns the jobs whose call was lost."""
        lost = await asyncio.gather(*(self._wait(job) for job in jobs))
        return [job for job, gone in zip(jobs, lost, strict=True) if gone]

    async def _wait(self, job: Job) -> bool:
        call_id = job.modal_call_id
        assert call_id is not None
        try:
            self.outcomes[job.id] = await self.backend.await_call(call_id, timeout=self.remaining())
        except TimeoutError:
            self.outcomes[job.id] = self.timed_out()
            self.overdue.append(call_id)
        except InferenceCallLost as exc:
            self.outcomes[job.id] = exc
            return True
        except Exception as exc:
            # A bug in a backend fails this job visibly instead of leaving it leased.
            logger.exception("Waiting for call %s on %s failed", call_id, type(self.backend).__name__)
            self.outcomes[job.id] = InferenceError(str(exc), error_type=type(exc).__name__)
        return False
