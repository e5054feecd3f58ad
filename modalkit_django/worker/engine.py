"""The worker's side of the job service: a batch's flow, from claim to first send.

::

    run_job(s)(ids) ─▶ JobBatcher ─▶ process_batch(ids)
                                  claim ─▶ predict ─▶ finish (+ deliveries, one transaction)
                                  │ lease renewed every HEARTBEAT_SECONDS meanwhile
                                  └─▶ first send of each delivery, in the background

One :class:`Engine` per event loop (a TaskIQ worker's, or the embedded broker's). Its
database work runs on Django's sync thread, so each worker process keeps one persistent
connection; when the database goes away, each step waits for it (with backoff, up to
``WORKER["DATABASE_RETRY_SECONDS"]``) instead of abandoning the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import Sequence
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
from .batcher import JobBatcher
from .database import run_db
from .detached import predict_detached
from .streaming import predict_streaming, streams

__all__ = ["Engine", "forget_engines", "get_engine"]

logger = logging.getLogger(__name__)


def _claim(job_ids: Sequence[str]) -> list[Job]:
    return Job.objects.claim(job_ids, lease_seconds=get_settings().worker.lease_seconds)


def _settle(results: list[tuple[Job, Prediction]]) -> tuple[Settled, list[QueueDelivery]]:
    """The outcomes and deliveries of a batch, made without a query: on the event loop,
    so the database thread, a worker's bottleneck, only runs statements."""
    worker = get_settings().worker
    settled = Job.objects.settle(
        results, max_attempts=worker.max_attempts, retry_backoff_seconds=worker.retry_backoff_seconds
    )
    return settled, deliveries_for(settled.finished, timezone.now(), sent_by_caller=True)


def _store(settled: Settled, deliveries: list[QueueDelivery]) -> list[QueueDelivery]:
    stored = Job.objects.store(settled, deliveries)
    # Once the finish committed, a batch whose last job this was is complete (the sweep
    # completes those that two workers, each finishing one of its last jobs, left to the other).
    return stored + complete_batches({job.batch_id for job in settled.jobs if job.batch_id and job.is_finished})


async def _store_calls(jobs: list[Job]) -> set[uuid.UUID]:
    return await run_db(Job.objects.attach_calls, jobs)


async def _write_progress(reports: list[ProgressReport], token: uuid.UUID) -> set[uuid.UUID]:
    return await run_db(Job.objects.report_progress, reports, token=token)


def _record(results: list[SendResult]) -> None:
    QueueDelivery.objects.record(results, policy=get_settings().delivery)


def _unsent(delivery_id: str) -> QueueDelivery | None:
    return QueueDelivery.objects.unsent().filter(id=delivery_id).first()


class Engine:
    """Runs this event loop's batches, keeps their leases, and tracks their first sends."""

    def __init__(self) -> None:
        worker = get_settings().worker
        self.batcher = JobBatcher(self.process_batch, batch_size=worker.batch_size, in_flight=worker.batches_in_flight)
        self._leases: set[uuid.UUID] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        # What this loop has done, for its worker's heartbeat row (see heartbeats.py).
        self.jobs_done = self.deliveries_sent = self.in_flight = 0

    async def run_jobs(self, job_ids: Sequence[str]) -> None:
        """Run these jobs, batched with whatever else this event loop is running now."""
        await self.batcher.run(job_ids)

    async def process_batch(self, job_ids: Sequence[str]) -> None:
        """Claim, infer and finish a batch; its deliveries' first attempts go on in the background."""
        jobs = await run_db(_claim, job_ids)
        if not jobs:
            return
        token = jobs[0].lease_token
        assert token is not None
        self._hold(token)
        self.in_flight += len(jobs)
        try:
            started = time.monotonic()
            predictions = await self.predict(jobs)
            inference_seconds = time.monotonic() - started
            deliveries = await run_db(_store, *_settle(list(zip(jobs, predictions, strict=True))))
        finally:
            self._leases.discard(token)
            self.in_flight -= len(jobs)
        self.jobs_done += sum(job.is_finished for job in jobs)
        metrics.jobs_finished(jobs, inference_seconds=inference_seconds)
        if deliveries:
            # Off the batch slot: a slow queue must not hold up the next batch's inference.
            task = asyncio.create_task(self.send(deliveries, timeout=get_settings().delivery.inline_timeout_seconds))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

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

    async def deliver(self, delivery_id: str) -> None:
        """Send one delivery that is due again (a retry, a redelivery, a cancellation notice)."""
        delivery = await run_db(_unsent, delivery_id)
        if delivery is not None:
            await self.send([delivery])

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the first sends still in flight: at shutdown, so a
        message a receiver already has is recorded as sent, not sent again."""
        if self._sends:
            await asyncio.wait(set(self._sends), timeout=timeout)

    # --- Leases ------------------------------------------------------------------------

    def _hold(self, token: uuid.UUID) -> None:
        self._leases.add(token)
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        """While batches run, renew their leases: a live worker's jobs are never reclaimed."""
        worker = get_settings().worker
        while self._leases:
            await asyncio.sleep(worker.heartbeat_seconds)
            try:
                await run_db(Job.objects.renew_leases, set(self._leases), lease_seconds=worker.lease_seconds)
            except Exception:
                logger.exception("Renewing the leases of %d batches failed", len(self._leases))


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
