"""What a worker process does with its messages, batched.

Each ``run_job`` message waits on a :class:`JobBatcher`, which gathers the jobs
whose messages arrived together and runs them as one batch: one claim, one call
to the model per model name, one finishing transaction, then the first send of
every delivery. Database work runs on Django's single sync thread, so each worker
process keeps one persistent connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections

from . import services
from .conf import get_settings
from .exceptions import InferenceError
from .inference.backends import Prediction, get_inference_backend
from .models import Job, QueueDelivery
from .queues import queues

__all__ = [
    "JobBatcher",
    "close_backends",
    "close_db_connections",
    "deliver",
    "process_jobs",
    "run_job",
    "run_sweeper",
    "sweep_once",
]

logger = logging.getLogger(__name__)


def _db[**P, R](function: Callable[P, R]) -> Callable[P, Any]:
    """Run ``function`` on Django's sync thread, where this worker's connection lives."""
    return sync_to_async(function, thread_sensitive=True)


def _refresh_connections() -> None:
    """Django's ``close_old_connections()`` for a worker, once per batch.

    It also never closes a connection in the middle of a transaction (as inside a
    test's transaction).
    """
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


def _claim(job_ids: Sequence[str]) -> list[Job]:
    _refresh_connections()
    return services.claim_jobs(job_ids=job_ids)


class JobBatcher:
    """Collects job ids and processes them in batches.

    At most ``in_flight`` batches run at once; while they do, new ids wait and the
    next batch grows, up to ``batch_size``. A batch that is not full waits ``wait``
    seconds for company before it goes. Each caller waits for its own batch, so the
    broker acknowledges a message only once its job is stored.
    """

    def __init__(self, *, batch_size: int, in_flight: int = 2, wait: float = 0.002) -> None:
        self.batch_size = batch_size
        self.wait = wait
        self._waiting: list[tuple[str, asyncio.Future[None]]] = []
        self._slots = asyncio.Semaphore(in_flight)
        self._pump: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def run(self, job_id: str) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((job_id, done))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._form_batches())
        await done

    async def _form_batches(self) -> None:
        while self._waiting:
            await self._slots.acquire()
            if len(self._waiting) < self.batch_size:
                await asyncio.sleep(self.wait)
            batch, self._waiting = self._waiting[: self.batch_size], self._waiting[self.batch_size :]
            task = asyncio.create_task(self._process(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _process(self, batch: list[tuple[str, asyncio.Future[None]]]) -> None:
        try:
            await process_jobs([job_id for job_id, _ in batch])
        except Exception as exc:
            # The jobs stay queued or leased in the database; the sweep recovers them.
            logger.exception("Processing a batch of %d jobs failed", len(batch))
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
        else:
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
        finally:
            self._slots.release()


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, JobBatcher] = weakref.WeakKeyDictionary()


async def run_job(job_id: str) -> None:
    """Run one job, batched with whatever else this event loop is running now."""
    loop = asyncio.get_running_loop()
    batcher = _batchers.get(loop)
    if batcher is None:
        worker = get_settings().worker
        batcher = _batchers[loop] = JobBatcher(batch_size=worker.batch_size, in_flight=worker.batches_in_flight)
    await batcher.run(job_id)


async def process_jobs(job_ids: Sequence[str]) -> None:
    """Claim, infer, finish and deliver a batch of jobs."""
    jobs = await _db(_claim)(job_ids)
    if not jobs:
        return
    predictions = await _predict(jobs)
    deliveries = await _db(services.finish_jobs)(results=list(zip(jobs, predictions, strict=True)))
    if deliveries:
        await send(deliveries)


async def _predict(jobs: list[Job]) -> list[Prediction]:
    backend = get_inference_backend()
    by_model: defaultdict[str, list[int]] = defaultdict(list)
    for index, job in enumerate(jobs):
        by_model[job.model_name].append(index)
    predictions: list[Prediction | None] = [None] * len(jobs)

    async def predict_model(model_name: str, indexes: list[int]) -> None:
        outputs: list[Prediction]
        try:
            outputs = await backend.apredict_many(model_name, [jobs[index].message for index in indexes])
            if len(outputs) != len(indexes):
                raise RuntimeError(f"returned {len(outputs)} predictions for {len(indexes)} messages")
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


async def send(deliveries: Sequence[QueueDelivery]) -> None:
    """Attempt each delivery once through its backend and record what happened."""
    by_alias: defaultdict[str, list[QueueDelivery]] = defaultdict(list)
    for delivery in deliveries:
        by_alias[delivery.backend].append(delivery)

    async def send_alias(alias: str, group: list[QueueDelivery]) -> list[services.SendResult]:
        try:
            backend = queues[alias]
            outcomes = await backend.asend_many([services.message_for(delivery) for delivery in group])
        except Exception as exc:
            outcomes = [exc] * len(group)
        return [
            services.SendResult(delivery, error=outcome)
            if isinstance(outcome, BaseException)
            else services.SendResult(delivery, external_id=outcome)
            for delivery, outcome in zip(group, outcomes, strict=True)
        ]

    grouped = await asyncio.gather(*(send_alias(alias, group) for alias, group in by_alias.items()))
    await _db(services.record_sends)(results=[result for results in grouped for result in results])


async def deliver(delivery_id: str) -> None:
    """Send one delivery that is due again (a retry, a redelivery, a cancellation)."""
    delivery = await _db(services.unsent_delivery)(delivery_id=delivery_id)
    if delivery is not None:
        await send([delivery])


async def sweep_once() -> services.SweepResult:
    """Run the sweep and send the wake-ups it asks for."""
    from . import broker, tasks

    result: services.SweepResult = await _db(services.sweep)()
    for job_id in result.jobs_to_wake:
        await broker.akick(tasks.run_job, str(job_id))
    for delivery_id in result.deliveries_to_send:
        await broker.akick(tasks.deliver, str(delivery_id))
    return result


async def run_sweeper() -> None:
    """Sweep forever, every ``WORKER["SWEEP_INTERVAL_SECONDS"]`` (jittered so workers spread out)."""
    interval = get_settings().worker.sweep_interval_seconds
    await asyncio.sleep(random.uniform(0, interval))
    while True:
        try:
            await sweep_once()
        except Exception:
            logger.exception("Sweep failed; trying again in %ss", interval)
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))


async def close_backends() -> None:
    for alias in get_settings().queues:
        try:
            await queues[alias].aclose()
        except Exception:
            logger.warning("Closing queue backend %s failed", alias, exc_info=True)


async def close_db_connections() -> None:
    """Close the connections of Django's sync thread, where this worker's queries ran."""
    await sync_to_async(connections.close_all, thread_sensitive=True)()
