"""TaskIQ tasks. They take ids, never objects, and are idempotent: a duplicate
message finds its job already claimed (or its delivery already sent) and does nothing.
"""

from __future__ import annotations

from taskiq.brokers.shared_broker import async_shared_broker

from . import worker

__all__ = ["deliver", "run_job"]


@async_shared_broker.task(task_name="modalkit.run_job")
async def run_job(job_id: str) -> None:
    """Run the job's inference, store the outcome, and send it to its queue."""
    await worker.run_job(job_id)


@async_shared_broker.task(task_name="modalkit.deliver")
async def deliver(delivery_id: str) -> None:
    """Send a delivery that is due again: a retry, a redelivery, a cancellation notice."""
    await worker.deliver(delivery_id)
