"""What lands on a queue: a finished job's payload, the delivery row that carries it,
and the message a queue backend is handed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from .conf import get_settings
from .models import Job, QueueDelivery
from .queues import QueueMessage, queues

__all__ = ["deliveries_for", "message_for", "queue_payload"]


def deliveries_for(jobs: Iterable[Job], now: dt.datetime, *, sent_by_caller: bool) -> list[QueueDelivery]:
    """The deliveries of finished jobs, on their success or failure route, where they name a queue.

    ``sent_by_caller``: the caller attempts them at once, so the sweep leaves them alone
    for ``DELIVERY["CLAIM_SECONDS"]``; otherwise they are due now and the sweep sends them.
    """
    claim = get_settings().delivery.claim_seconds if sent_by_caller else 0.0
    deliveries = []
    for job in jobs:
        queue_name = job.success_queue if job.status == Job.Status.SUCCEEDED else job.failure_queue
        if queue_name:
            deliveries.append(
                QueueDelivery.for_job(
                    job, backend=queues.route(queue_name), payload=queue_payload(job, now), now=now, claim=claim
                )
            )
    return deliveries


def queue_payload(job: Job, now: dt.datetime) -> dict[str, Any]:
    """ModalKit's output message plus ``job_id``, ``model_name``, ``meta``, a timestamp and
    ``submitted_by`` (the owner's user id and the API key's prefix).

    A failure also carries the original request, as ModalKit's
    ``DelayedFailureOutputModel`` does, so the consumer can resubmit it.
    """
    common = {
        "job_id": str(job.id),
        "model_name": job.model_name,
        "meta": job.meta,
        "timestamp": now.isoformat(),
        # Who asked, so a receiver can check the result is from a tenant it expects.
        "submitted_by": {"owner_id": job.owner_id, "api_key": job.api_key_prefix},
    }
    if job.status == Job.Status.SUCCEEDED:
        return {**(job.result or {}), "status": "success", **common}
    error = job.error or {}
    return {
        "status": "error",
        "error": error.get("message", ""),
        "error_type": error.get("type", ""),
        **common,
        "original_message": job.request(),
    }


def message_for(delivery: QueueDelivery) -> QueueMessage:
    return QueueMessage(
        message_id=delivery.message_id,
        queue_name=delivery.queue_name,
        route=delivery.route,
        job_id=str(delivery.job_id),
        payload=delivery.payload,
    )
