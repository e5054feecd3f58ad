"""The engine's steps, callable one at a time from tests, inside the test's transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings
from django.test import override_settings

import modalkit_django
from modalkit_django.conf import get_settings
from modalkit_django.models import Job, JobOutput, QueueDelivery, SendResult, SweepState
from modalkit_django.worker import engine, sweeper

OUTPUT = {"status": "success", "sentiment": "positive", "confidence": 0.9}


def submit(**kwargs: Any) -> Job:
    return modalkit_django.submit_job(message={"text": "good"}, **kwargs)


def pending_delivery(**submit_kwargs: Any) -> QueueDelivery:
    """A finished job's delivery, not yet attempted."""
    job = claim_one(submit(success_queue="q", **submit_kwargs))
    [delivery] = finish([(job, OUTPUT)])
    return delivery


def claim(job_ids: Iterable[Any]) -> list[Job]:
    """Claim these jobs (the runnable ones among them), as a worker's claim would."""
    ids = [str(job_id) for job_id in job_ids]
    return Job.objects.claim(limit=len(ids), lease_seconds=get_settings().worker.lease_seconds, only=ids)


def claim_one(job: Job) -> Job:
    [claimed] = claim([job.id])
    return claimed


def finish(results: Sequence[tuple[Job, Any]]) -> list[QueueDelivery]:
    """Finish claimed jobs and insert their deliveries, as a worker does after inference."""
    stored, _ = engine._store(*engine._settle(list(results), sending=True))
    return stored


def give_outputs(job: Job, outputs: list[dict[str, Any]], *, using: str = "default") -> None:
    """As a streaming pipeline's reports would: these partial outputs in the job's current run."""
    runs = Job.objects.using(using).values_list("runs", flat=True).get(id=job.id)
    rows = (JobOutput(job_id=job.id, run=runs, seq=n, output=output) for n, output in enumerate(outputs))
    JobOutput.objects.using(using).bulk_create(rows)
    Job.objects.using(using).filter(id=job.id).update(output_count=len(outputs))


def record(results: Sequence[SendResult]) -> None:
    QueueDelivery.objects.record(results, policy=get_settings().delivery)


def sweep() -> sweeper.SweepResult:
    """One sweep pass now, whenever the last one ran."""
    SweepState.objects.all().delete()
    result = sweeper.sweep(worker="test")
    assert result is not None
    return result


async def process_batch(job_ids: Sequence[Any]) -> None:
    """A worker's batch of these jobs, first sends included (they run in the background:
    wait for them)."""
    batch_engine = engine.get_engine()
    await batch_engine.process_batch(len(job_ids), only=[str(job_id) for job_id in job_ids])
    await batch_engine.drain(30)


async def send_due() -> None:
    """A pass of a worker's delivery loop: what is due (notices, completions, retries) is sent."""
    while await engine.get_engine().send_due():
        pass


def due_deliveries() -> list[Any]:
    """The ids of the deliveries due now, claimed as a worker's delivery loop claims them."""
    claimed = QueueDelivery.objects.claim_due(claim_seconds=get_settings().delivery.claim_seconds, limit=1000)
    return [delivery.id for delivery in claimed]


async def deliver(delivery_id: Any) -> None:
    """One attempt at a delivery that is due, as the delivery loop makes it."""
    unsent = QueueDelivery.objects.unsent().filter(id=delivery_id)
    delivery = await unsent.afirst()
    if delivery is not None:
        await engine.get_engine().send([delivery])


def with_modalkit(**changes: Any) -> Any:
    """``override_settings`` for some keys of ``MODALKIT``; dicts are merged one level deep."""
    merged = {**settings.MODALKIT}
    for key, value in changes.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return override_settings(MODALKIT=merged)
