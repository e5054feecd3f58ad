"""The worker's engine: it claims the runnable jobs, runs them in batches, keeps their
leases, and sends their results.

::

    fetch loop ─▶ claim up to BATCH_SIZE: the highest priority, the longest due, whoever woke it
       ▲            │ at most BATCHES_IN_FLIGHT batches at once
       │            └▶ predict ─▶ finish (+ deliveries, one transaction) ─▶ first sends, in the background
       │                 leases renewed every HEARTBEAT_SECONDS on a connection of their own;
       │                 a lease lost meanwhile (reclaimed, canceled) stops the batch's work
       └ a wake-up nudges it; idle, it looks again every POLL_INTERVAL_SECONDS

    delivery loop ─▶ claim due deliveries (retries, redeliveries, notices, first sends not
                     made inline) ─▶ send ─▶ record; the same nudge and poll

A wake-up message is only a nudge: whatever it names, a worker with room takes what is
runnable now, so lost messages, scheduled jobs coming due and bulk retries all drain at
the workers' speed, not the sweep's. One :class:`Engine` per event loop (a TaskIQ
worker's, or the embedded broker's); its statements run on the threads of
:mod:`.database`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from .. import metrics
from ..clients import Prediction, get_inference_backend
from ..clients.base import DetachedCalls
from ..conf import get_settings, inference_timeout
from ..exceptions import InferenceError, InferenceTimeout
from ..jobs.completion import complete_batches
from ..jobs.messages import deliveries_for, message_for
from ..models import Job, QueueDelivery, SendResult
from ..models.jobs import ProgressReport, Settled
from ..queues import queues
from .database import LEASES, run_db
from .detached import predict_detached
from .streaming import predict_streaming, streams

__all__ = ["Engine", "forget_engines", "get_engine"]

logger = logging.getLogger(__name__)

# Batches of first sends in flight at once per worker; past it, a batch's deliveries are
# left due for the delivery loop, so a slow receiver never piles up sockets or tasks.
SENDS_IN_FLIGHT = 8


# --- The statements, run on the database threads ----------------------------------------


def _claim(limit: int, token: uuid.UUID, only: Sequence[str] | None = None) -> list[Job]:
    return Job.objects.claim(limit=limit, lease_seconds=get_settings().worker.lease_seconds, token=token, only=only)


def _claimed(limit: int, token: uuid.UUID, only: Sequence[str] | None = None) -> list[Job]:
    """A claim tried again after its connection broke: the first try may have claimed
    already, its reply lost. Those jobs, if any; else a claim."""
    held = list(Job.objects.filter(status=Job.Status.RUNNING, lease_token=token))
    return held or _claim(limit, token, only)


def _settle(results: list[tuple[Job, Prediction]], *, sending: bool) -> tuple[Settled, list[QueueDelivery]]:
    """The outcomes and deliveries of a batch, made without a query: on the event loop,
    so the database thread, a worker's bottleneck, only runs statements. ``sending``: this
    worker makes the first attempts (else they are due at once, for the delivery loops)."""
    worker = get_settings().worker
    settled = Job.objects.settle(
        results,
        max_attempts=worker.max_attempts,
        retry_backoff_seconds=worker.retry_backoff_seconds,
        max_result_bytes=worker.max_result_bytes,
    )
    return settled, deliveries_for(settled.finished, timezone.now(), sent_by_caller=sending)


def _store(settled: Settled, deliveries: list[QueueDelivery]) -> tuple[list[QueueDelivery], bool]:
    """Finish a batch: the deliveries stored, and whether it completed a batch of jobs (whose
    completion message is due at once, for the delivery loops)."""
    stored = Job.objects.store(settled, deliveries)
    # Once the finish committed, a batch whose last job this was is complete (the sweep
    # completes those that two workers, each finishing one of its last jobs, left to the other).
    completed = complete_batches({job.batch_id for job in settled.jobs if job.batch_id and job.is_finished})
    return stored, bool(completed)


def _stored(settled: Settled, deliveries: list[QueueDelivery]) -> tuple[list[QueueDelivery], bool]:
    """A finish tried again after its connection broke: if the first try committed (its
    reply lost), its deliveries are there, and nothing is to be done again (the sweep
    completes a batch it may have completed)."""
    existing = set(QueueDelivery.objects.filter(id__in=[d.id for d in deliveries]).values_list("id", flat=True))
    if existing:
        return [delivery for delivery in deliveries if delivery.id in existing], False
    return _store(settled, deliveries)


async def _store_calls(jobs: list[Job]) -> set[uuid.UUID]:
    return await run_db(Job.objects.attach_calls, jobs)


async def _write_progress(reports: list[ProgressReport], token: uuid.UUID) -> set[uuid.UUID]:
    return await run_db(Job.objects.report_progress, reports, token=token)


def _record(results: list[SendResult]) -> None:
    QueueDelivery.objects.record(results, policy=get_settings().delivery)


def _claim_deliveries(limit: int) -> list[QueueDelivery]:
    return QueueDelivery.objects.claim_due(claim_seconds=get_settings().delivery.claim_seconds, limit=limit)


@dataclass
class _Lease:
    """A batch this engine runs: its jobs, and the task doing its work (stopped if lost)."""

    job_ids: set[uuid.UUID]
    work: asyncio.Task[Any] | None = None
    lost: set[uuid.UUID] = field(default_factory=set)


class Engine:
    """Claims and runs this event loop's batches, keeps their leases, sends their results."""

    def __init__(self) -> None:
        worker = get_settings().worker
        self.batch_size = worker.batch_size
        self._slots = asyncio.Semaphore(worker.batches_in_flight)
        self._nudged = asyncio.Event()
        self._deliveries_nudged = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._batches: set[asyncio.Task[None]] = set()
        self._leases: dict[uuid.UUID, _Lease] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        # What this loop has done, for its worker's heartbeat row (see heartbeats.py).
        self.jobs_done = self.deliveries_sent = self.in_flight = 0

    # --- Running ------------------------------------------------------------------------

    def start(self) -> None:
        """Start looking for work (the fetch and delivery loops), on the running loop. Idempotent."""
        if not self._loops:
            self._loops = [asyncio.create_task(self._fetch()), asyncio.create_task(self._deliver())]

    async def stop(self, timeout: float) -> None:
        """Stop looking for work; give running batches and first sends ``timeout`` seconds to
        end, then give back the jobs of those that did not (queued again at once, not after
        their lease)."""
        loops, self._loops = self._loops, []
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if pending := self._batches | self._sends:
            await asyncio.wait(pending, timeout=timeout)
        if unfinished := list(self._leases):
            for task in self._batches:
                task.cancel()
            await asyncio.gather(*self._batches, return_exceptions=True)
            released = await run_db(Job.objects.release, unfinished)
            logger.warning("Stopped with %d jobs unfinished; they are queued again", released)

    def nudge(self) -> None:
        """A wake-up came: look for runnable jobs now rather than at the next poll."""
        self._nudged.set()

    def nudge_deliveries(self) -> None:
        """Deliveries were made due (a redelivery, a notice): look for them now."""
        self._deliveries_nudged.set()

    async def _fetch(self) -> None:
        poll = get_settings().worker.poll_interval_seconds
        while True:
            await self._slots.acquire()
            self._nudged.clear()
            try:
                jobs = await self.claim(self.batch_size)
            except Exception:
                self._slots.release()
                logger.exception("Claiming jobs failed; trying again in %ss", poll)
                await _wait(self._nudged, poll)
                continue
            if not jobs:
                self._slots.release()
            else:
                self._spawn(self._run_in_slot(jobs))
            if len(jobs) < self.batch_size:
                # The queue ran dry: what comes next comes with a wake-up, at the next poll,
                # or when the next scheduled job falls due, whichever is first.
                await _wait(self._nudged, await self._idle_for(poll))

    async def _idle_for(self, poll: float) -> float:
        try:
            due_in = await run_db(Job.objects.seconds_to_next_due)
        except Exception:
            return poll  # the claim's failure, if it persists, is logged by the claim
        return poll if due_in is None else min(poll, due_in)

    async def _run_in_slot(self, jobs: list[Job]) -> None:
        try:
            await self.run_batch(jobs)
        finally:
            self._slots.release()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def claim(self, limit: int, *, only: Sequence[str] | None = None) -> list[Job]:
        """Claim up to ``limit`` runnable jobs (among ``only``, if given) under a new lease."""
        token = uuid.uuid4()
        return await run_db(_claim, limit, token, only, retry_with=_claimed)

    async def process_batch(self, limit: int, *, only: Sequence[str] | None = None) -> list[Job]:
        """Claim a batch and run it (as the fetch loop does, once); returns the jobs it ran."""
        jobs = await self.claim(limit, only=only)
        if jobs:
            await self.run_batch(jobs)
        return jobs

    async def run_batch(self, jobs: list[Job]) -> None:
        """Infer and finish claimed jobs; their deliveries' first attempts go on in the background."""
        token = jobs[0].lease_token
        assert token is not None
        lease = self._hold(token, jobs)
        self.in_flight += len(jobs)
        try:
            started = time.monotonic()
            lease.work = asyncio.create_task(self.predict(jobs))
            try:
                predictions = await lease.work
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if (current is not None and current.cancelling()) or lease.job_ids - lease.lost:
                    raise  # not the lease's doing: the worker is stopping
                logger.warning("The lease of %d jobs was lost while they ran; their work is dropped", len(jobs))
                return
            inference_seconds = time.monotonic() - started
            sending = len(self._sends) < SENDS_IN_FLIGHT
            settled, deliveries = _settle(list(zip(jobs, predictions, strict=True)), sending=sending)
            stored, completed = await run_db(_store, settled, deliveries, retry_with=_stored)
        finally:
            self._leases.pop(token, None)
            if not self._leases and self._heartbeat is not None:
                self._heartbeat.cancel()  # nothing left to renew until the next batch
            self.in_flight -= len(jobs)
        self.jobs_done += sum(job.is_finished for job in jobs)
        metrics.jobs_finished(jobs, inference_seconds=inference_seconds)
        if stored and sending:
            # Off the batch slot: a slow queue must not hold up the next batch's inference.
            task = asyncio.create_task(self.send(stored, timeout=get_settings().delivery.inline_timeout_seconds))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        if completed or (stored and not sending):
            self.nudge_deliveries()

    async def predict(self, jobs: Sequence[Job]) -> list[Prediction]:
        """One prediction per job, in order: one model call per model name, all under one deadline.

        A backend with detached calls (Modal) gets one call per job instead, whose id is
        stored on the job (see :mod:`.detached`).
        """
        backend = get_inference_backend()
        if (streaming := streams(backend)) is not None:
            # A generator pipeline: one stream per job, its progress written as it comes.
            return await predict_streaming(
                streaming, jobs, deadline=inference_timeout(), write=_write_progress,
                max_outputs=get_settings().worker.max_partial_outputs,
            )  # fmt: skip
        if isinstance(backend, DetachedCalls):
            return await predict_detached(backend, jobs, deadline=inference_timeout(), store=_store_calls)
        by_model: defaultdict[str, list[int]] = defaultdict(list)
        for index, job in enumerate(jobs):
            by_model[job.model_name].append(index)
        predictions: list[Prediction | None] = [None] * len(jobs)
        deadline = inference_timeout()

        async def predict_model(model_name: str, indexes: list[int]) -> None:
            outputs: list[Prediction]
            try:
                async with asyncio.timeout(deadline):
                    outputs = await backend.apredict_many(model_name, [jobs[index].message for index in indexes])
                if len(outputs) != len(indexes):
                    raise RuntimeError(f"returned {len(outputs)} predictions for {len(indexes)} messages")
            except TimeoutError:
                outputs = [InferenceTimeout(f"Inference did not finish within {deadline:g} s")] * len(indexes)
            except InferenceError as exc:
                outputs = [exc] * len(indexes)
            except Exception as exc:
                # A bug in a backend fails these jobs visibly instead of leaving them leased.
                logger.exception("Inference backend %s failed", type(backend).__name__)
                outputs = [InferenceError(str(exc), error_type=type(exc).__name__)] * len(indexes)
            for index, output in zip(indexes, outputs, strict=True):
                predictions[index] = output

        await asyncio.gather(*(predict_model(name, indexes) for name, indexes in by_model.items()))
        return [prediction for prediction in predictions if prediction is not None]

    async def send(self, deliveries: Sequence[QueueDelivery], *, timeout: float | None = None) -> None:
        """Attempt each delivery once through its backend and record what happened."""
        by_alias: defaultdict[str, list[QueueDelivery]] = defaultdict(list)
        for delivery in deliveries:
            by_alias[delivery.backend].append(delivery)

        async def send_alias(alias: str, group: list[QueueDelivery]) -> list[SendResult]:
            outcomes: list[str | BaseException]
            try:
                async with asyncio.timeout(timeout):
                    outcomes = await queues[alias].asend_many([message_for(delivery) for delivery in group])
            except TimeoutError:
                outcomes = [TimeoutError(f"no answer within {timeout:g} s; retried later")] * len(group)
            except Exception as exc:
                outcomes = [exc] * len(group)
            return [
                SendResult(delivery, error=outcome)
                if isinstance(outcome, BaseException)
                else SendResult(delivery, external_id=outcome)
                for delivery, outcome in zip(group, outcomes, strict=True)
            ]

        grouped = await asyncio.gather(*(send_alias(alias, group) for alias, group in by_alias.items()))
        results = [result for results in grouped for result in results]
        await run_db(_record, results)
        self.deliveries_sent += sum(result.error is None for result in results)
        metrics.deliveries_attempted(results)

    async def _deliver(self) -> None:
        """Send deliveries that are due: retries, redeliveries, notices, first sends not made inline."""
        poll = get_settings().worker.poll_interval_seconds
        while True:
            self._deliveries_nudged.clear()
            try:
                sent = await self.send_due()
            except Exception:
                logger.exception("Sending due deliveries failed; trying again in %ss", poll)
                sent = 0
            if sent < self.batch_size:
                await _wait(self._deliveries_nudged, poll)

    async def send_due(self) -> int:
        """Claim up to a batch of the deliveries due and attempt them (as the delivery loop
        does, once); how many were attempted."""
        due = await run_db(_claim_deliveries, self.batch_size)
        if due:
            await self.send(due, timeout=get_settings().delivery.inline_timeout_seconds)
        return len(due)

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the first sends still in flight: at shutdown, so a
        message a receiver already has is recorded as sent, not sent again."""
        if self._sends:
            await asyncio.wait(set(self._sends), timeout=timeout)

    # --- Leases ------------------------------------------------------------------------

    def _hold(self, token: uuid.UUID, jobs: Sequence[Job]) -> _Lease:
        lease = self._leases[token] = _Lease({job.id for job in jobs})
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._beat())
        return lease

    async def _beat(self) -> None:
        """While batches run, renew their leases: a live worker's jobs are never reclaimed.

        On a connection of its own (:data:`.database.LEASES`), so a renewal never waits
        behind this worker's other statements. A lease renewed for fewer jobs than it held
        lost them (reclaimed after an outage, or canceled): their work is not this
        worker's any more, and a batch that lost every job stops.
        """
        worker = get_settings().worker
        while self._leases:
            await asyncio.sleep(worker.heartbeat_seconds)
            try:
                renewed = await run_db(
                    Job.objects.renew_leases, list(self._leases), lease_seconds=worker.lease_seconds, thread=LEASES
                )
            except Exception:
                logger.exception("Renewing the leases of %d batches failed", len(self._leases))
                continue
            for token, held in renewed.items():
                if (lease := self._leases.get(token)) is not None:
                    self._lost(lease, lease.job_ids - held)

    def _lost(self, lease: _Lease, job_ids: set[uuid.UUID]) -> None:
        if not job_ids - lease.lost:
            return
        lease.lost |= job_ids
        logger.warning("%d running jobs are no longer held by this worker (reclaimed or canceled)", len(job_ids))
        if lease.lost >= lease.job_ids and lease.work is not None:
            lease.work.cancel()


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set or ``timeout`` seconds passed."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


_engines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Engine] = weakref.WeakKeyDictionary()


def get_engine() -> Engine:
    """The running event loop's engine, made on first use."""
    loop = asyncio.get_running_loop()
    engine = _engines.get(loop)
    if engine is None:
        engine = _engines[loop] = Engine()
    return engine


def forget_engines(**kwargs: Any) -> None:
    """``setting_changed`` receiver: the next use builds engines from the new settings."""
    if kwargs.get("setting", "MODALKIT") == "MODALKIT":
        _engines.clear()
