"""What lands on a queue: a finished job's payload, the delivery row that carries it,
and the message a queue backend is handed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from ..conf import get_settings
from ..models import Job, QueueDelivery
from ..queues import QueueMessage, queues

__all__ = ["MODALKIT_ERROR_TEXT", "deliveries_for", "message_for", "queue_payload"]

# ModalKit's error for an input whose batch raised (``ModalService.process_request``).
MODALKIT_ERROR_TEXT = "Internal Server Error. Error log: {}"


def deliveries_for(jobs: Iterable[Job], now: dt.datetime, *, sent_by_caller: bool) -> list[QueueDelivery]:
    """The deliveries of finished jobs, on their success or failure route, where they name a queue.

    ``sent_by_caller``: the caller attempts them at once, so the delivery loops leave them
    alone for ``DELIVERY["CLAIM_SECONDS"]`` after ``now``; otherwise they are due at once,
    by the database's clock, for the delivery loops. ``now`` stamps the payloads.
    """
    claim = get_settings().delivery.claim_seconds
    deliveries = []
    for job in jobs:
        queue_name = job.success_queue if job.status == Job.Status.SUCCEEDED else job.failure_queue
        if not queue_name:
            continue
        backend, payload = queues.route(queue_name), queue_payload(job, now)
        if sent_by_caller:
            deliveries.append(QueueDelivery.for_job(job, backend=backend, payload=payload, now=now, claim=claim))
        else:
            deliveries.append(QueueDelivery.for_job(job, backend=backend, payload=payload))
    return deliveries


def queue_payload(job: Job, now: dt.datetime) -> dict[str, Any]:
    """The message for a finished job: ModalKit 0.2.0's, field for field, with ours beside.

    ModalKit's ``ModalService.send_async_response`` sends three shapes; a consumer
    written for them reads ours unchanged (``tests/test_modalkit_fidelity.py`` parses
    every shape with ModalKit's own pydantic models):

    - **success** (success queue): the output's fields, ``status: "success"`` and
      ``meta``, the request's ``meta``; no ``error``.
    - **an output whose status is not "success"** (failure queue): the output's fields
      as the pipeline returned them (``status``, ``error`` and its extras) and ``meta``;
      no ``original_message``, as in ModalKit. Only when the inference client kept the
      output (``job.error["output"]``); otherwise the job failed as below.
    - **failure** (failure queue; ModalKit's ``DelayedFailureOutputModel``):
      ``status: "error"``, ``error`` and ``original_message``, the request as the
      client sent it (``message``, ``success_queue``, ``failure_queue``, ``meta``), so
      that the consumer can resubmit it. ModalKit sends no top-level ``meta`` here.

    With ``MODALKIT["MESSAGE_FORMAT"] = "modalkit"`` that is all, for consumers that
    forbid extra fields; a failure's ``error`` is then ModalKit's text,
    ``"Internal Server Error. Error log: <message>"``. The default, ``"extended"``,
    adds ``job_id``, ``model_name``, ``timestamp`` (ISO 8601), ``submitted_by`` (the
    owner's user id and the API key's prefix, so a receiver can check the tenant) and,
    on failures, ``error_type`` (the exception's class name or ours: ``Expired``,
    ``Canceled``, ``WorkerLost`` …) and the top-level ``meta``; ``error`` is the plain
    message there.
    """
    strict = get_settings().message_format == "modalkit"
    extras: dict[str, Any] = {
        "job_id": str(job.id),
        "model_name": job.model_name,
        "timestamp": now.isoformat(),
        # Who asked, so a receiver can check the result is from a tenant it expects.
        "submitted_by": {"owner_id": job.owner_id, "api_key": job.api_key_prefix},
    }
    if job.status == Job.Status.SUCCEEDED:
        output = {key: value for key, value in (job.result or {}).items() if key != "error"}
        message = {**output, "status": "success", "meta": job.meta}
        return message if strict else {**message, **extras}
    error = job.error or {}
    kept = error.get("output")
    if isinstance(kept, dict):
        message = {"error": None, **kept, "meta": job.meta}
        return message if strict else {**message, "error_type": error.get("type", ""), **extras}
    text = str(error.get("message", ""))
    if strict:
        return {"status": "error", "error": MODALKIT_ERROR_TEXT.format(text), "original_message": job.request()}
    return {
        "status": "error",
        "error": text,
        "error_type": error.get("type", ""),
        "meta": job.meta,
        **extras,
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
