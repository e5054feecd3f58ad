"""The batch views: ``POST /async/predict/batch``, ``GET /batches/{batch_id}`` and its ``/jobs``.

No ``from __future__ import annotations`` here: ninja reads the views' annotations at
runtime, and the request schema is local to :func:`add_batch_routes`.
"""

import uuid
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import Router, Schema
from ninja.decorators import decorate_view
from ninja.errors import ValidationError
from ninja.params import functions as param
from ninja.responses import Status
from pydantic import BaseModel

from ..conf import get_pipeline_class, get_settings
from ..inference.pipeline import InferencePipeline
from ..jobs import batches
from ..models import Job, JobStatus
from .admission import admit, idempotency_key_header, refuse_unless_utf8
from .auth import caller_of, owner_of
from .errors import http_errors, ours
from .schemas import (
    AnyObject,
    BatchAccepted,
    BatchOut,
    ErrorOut,
    ServerErrorOut,
    ValidationErrorOut,
    batch_request_schema,
    job_page_schema,
)
from .threads import run_sync

__all__ = ["add_batch_routes"]

_AFTER = param.Query(None, description="The `next` of the previous page.")
_COMMON = {401: ErrorOut, 422: ValidationErrorOut, 500: ServerErrorOut, 503: ErrorOut}


def _item_request(item: BaseModel) -> dict[str, Any]:
    """What the item set, as :func:`batches.submit_batch` takes it: a field it left out
    takes the batch's value."""
    request = {name: getattr(item, name) for name in item.model_fields_set}
    request["message"] = item.message.model_dump(mode="json")  # type: ignore[attr-defined]
    return request


def _batch_out(status: batches.BatchStatus) -> dict[str, Any]:
    batch = status.batch
    return {
        "batch_id": batch.id,
        "model_name": batch.model_name,
        "size": batch.size,
        "counts": status.counts,
        "done": not (status.counts[JobStatus.QUEUED] or status.counts[JobStatus.RUNNING]),
        "meta": batch.meta,
        "completion_queue": batch.completion_queue,
        "created_at": batch.created_at,
        "completed_at": batch.completed_at,
        "completion": status.completion,
        "job_ids": status.job_ids,
    }


def add_batch_routes(
    router: Router,
    pipeline: type[InferencePipeline] | None,
    job_out: type[Schema],
    serialize_job: Callable[[Job], dict[str, Any]],
) -> None:
    """Add the batch views to ``router`` (built by ``build_router``), typed with ``pipeline``'s
    input schema and ``job_out``, its job (``serialize_job`` fills it in); without a
    pipeline, they answer 503 as the other model views do."""
    batch_request = batch_request_schema(pipeline.input_model if pipeline else AnyObject)
    with_body = {**_COMMON, 400: ErrorOut, 413: ErrorOut}

    @router.post(
        "/async/predict/batch",
        response={202: BatchAccepted, **with_body, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 429: ErrorOut},
        summary="Queue many jobs in one request; one message to completion_queue when all finished",
        operation_id="submit_batch",
    )
    @decorate_view(ours)
    async def async_predict_batch(
        request: HttpRequest,
        response: HttpResponse,
        payload: batch_request,  # type: ignore[valid-type]
        model_name: str | None = None,
        idempotency_key: str | None = idempotency_key_header("batch"),
    ) -> Any:
        refuse_unless_utf8(request)
        items = payload.items  # type: ignore[attr-defined]
        limit = get_settings().api.max_batch_items
        if len(items) > limit:
            problem = {"type": "too_long", "loc": ["body", "payload", "items"], "msg": f"At most {limit} items."}
            raise ValidationError([problem])
        caller = caller_of(request)
        queue_names = {payload.success_queue, payload.failure_queue, payload.completion_queue}  # type: ignore[attr-defined]
        queue_names |= {getattr(item, name) for item in items for name in ("success_queue", "failure_queue")}
        with http_errors():
            if pipeline is None:
                get_pipeline_class()  # raises the configuration error: a 503
            await admit(caller, tuple(sorted(queue_names)), jobs=len(items))
            submitted = await run_sync(
                batches.submit_batch,
                items=[_item_request(item) for item in items],
                model_name=model_name,
                success_queue=payload.success_queue,  # type: ignore[attr-defined]
                failure_queue=payload.failure_queue,  # type: ignore[attr-defined]
                meta=payload.meta,  # type: ignore[attr-defined]
                completion_queue=payload.completion_queue,  # type: ignore[attr-defined]
                owner=caller.owner,
                api_key_prefix=caller.key_prefix,
                idempotency_key=idempotency_key,
            )
        if submitted.replayed:
            response["Idempotent-Replayed"] = "true"
        batch = submitted.batch
        body = {
            "batch_id": batch.id,
            "model_name": batch.model_name,
            "size": batch.size,
            "created_at": batch.created_at,
            "job_ids": submitted.job_ids,
        }
        return Status(202, body)

    @router.get(
        "/batches/{batch_id}",
        response={200: BatchOut, **_COMMON, 404: ErrorOut},
        summary="A batch's jobs, counted by status",
        operation_id="get_batch",
    )
    @decorate_view(ours)
    async def get_batch(request: HttpRequest, batch_id: uuid.UUID) -> Any:
        with http_errors():
            status = await run_sync(batches.get_batch, batch_id=batch_id, owner=owner_of(request))
        return _batch_out(status)

    @router.get(
        "/batches/{batch_id}/jobs",
        response={200: job_page_schema(job_out), **_COMMON, 404: ErrorOut},
        summary="A batch's jobs with their results, in item order (404: `after` is not one of them)",
        operation_id="list_batch_jobs",
    )
    @decorate_view(ours)
    async def list_batch_jobs(
        request: HttpRequest,
        batch_id: uuid.UUID,
        status: JobStatus | None = None,
        limit: int = param.Query(100, ge=1, le=1000),
        after: uuid.UUID | None = _AFTER,
    ) -> Any:
        with http_errors():
            jobs, following = await run_sync(
                batches.list_batch_jobs,
                batch_id=batch_id,
                owner=owner_of(request),
                status=status,
                limit=limit,
                after=after,
            )
        return {"jobs": [serialize_job(job) for job in jobs], "next": following.id if following else None}
