"""The views: a ninja ``Router`` typed with the pipeline's own input and output schemas.

No ``from __future__ import annotations`` here: ninja reads the views' annotations at
runtime, and the request schemas are local to :func:`build_router`.
"""

import uuid
from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import Router
from ninja.decorators import decorate_view
from ninja.params import functions as param
from ninja.responses import Status

from ..clients import get_inference_backend
from ..conf import get_pipeline_class, resolve_model
from ..exceptions import ModalkitImproperlyConfigured
from ..inference.pipeline import InferencePipeline
from ..jobs import control, queries
from ..models import Job, JobStatus
from .admission import admit, idempotency_key_header, refuse_unless_utf8
from .auth import ApiKeyBearer, StaticApiKey, caller_of, owner_of
from .batches import add_batch_routes
from .errors import http_errors, ours
from .events import add_event_routes
from .intake import asubmit_job
from .schemas import (
    NO_NUL,
    AnyObject,
    ErrorOut,
    JobAccepted,
    ServerErrorOut,
    ValidationErrorOut,
    async_request_schema,
    job_page_schema,
    job_schema,
    sync_request_schema,
)
from .threads import run_sync

__all__ = ["build_router"]

_PAGE_CURSOR = param.Query(None, description="The `next` of the previous page.")


def _read_job(job_id: uuid.UUID, owner: Any) -> tuple[Job, list[dict[str, Any]]]:
    """The caller's job, and its current run's partial outputs."""
    job = queries.get_job(job_id=job_id, owner=owner)
    return job, job.partial_outputs


def _job_out(job: Job, outputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A job as the API shows it, with ``outputs``, its partial outputs. A page of jobs
    leaves them out (``None``: one more query each, up to megabytes of them); GET
    /jobs/{id} has them."""
    return {
        "job_id": job.id,
        "model_name": job.model_name,
        "status": job.status,
        "result": job.result,
        "error": job.error,
        "meta": job.meta,
        "success_queue": job.success_queue,
        "failure_queue": job.failure_queue,
        "attempts": job.attempts,
        "priority": job.priority,
        "run_after": job.run_after,
        "expires_at": job.expires_at,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "deliveries": list(job.deliveries.all()),
        "progress": job.progress,
        "progress_message": job.progress_message,
        "partial_outputs": outputs,
        "partial_output_count": job.output_count,
    }


def _configured_pipeline() -> type[InferencePipeline] | None:
    try:
        return get_pipeline_class()
    except ModalkitImproperlyConfigured:
        return None  # manage.py check says why; the views answer 503 meanwhile


def build_router(pipeline: type[InferencePipeline] | None = None) -> Router:
    """The API for ``pipeline``, typed with its schemas.

    Without ``pipeline``, ``MODALKIT["PIPELINE"]``; if that cannot be loaded, the router
    is built untyped and its model views answer 503 until it can (``manage.py check``
    reports the mistake), so that a configuration error never breaks the URLconf.
    """
    typed = pipeline or _configured_pipeline()
    input_model = typed.input_model if typed else AnyObject
    output_model = typed.output_model if typed else AnyObject
    predict_request = sync_request_schema(input_model)
    async_predict_request = async_request_schema(input_model)
    job_out = job_schema(output_model)
    router = Router(auth=[ApiKeyBearer(), StaticApiKey()], tags=["inference"])
    # What any view may answer (the error handlers of add_error_handlers included): a
    # missing key, bad parameters, an unexpected error, the database or pipeline away.
    common = {401: ErrorOut, 422: ValidationErrorOut, 500: ServerErrorOut, 503: ErrorOut}
    # ... and a view that reads a JSON body: malformed (400) or too large (413).
    with_body = {**common, 400: ErrorOut, 413: ErrorOut}

    def require_pipeline() -> None:
        if typed is None:
            get_pipeline_class()  # raises the configuration error: a 503

    @router.post(
        "/predict",
        response={200: output_model, **with_body, 404: ErrorOut, 429: ErrorOut, 502: ErrorOut, 504: ErrorOut},
        summary="Run the model now and return its output",
        description="Counted against the key's limits as a submit of one job is.",
        operation_id="predict",
    )
    @decorate_view(ours)
    async def predict(request: HttpRequest, payload: predict_request, model_name: str | None = None) -> Any:  # type: ignore[valid-type]
        refuse_unless_utf8(request)
        with http_errors():
            require_pipeline()
            await admit(caller_of(request), ())
            name = resolve_model(model_name)
            return await get_inference_backend().apredict(name, payload.message.model_dump(mode="json"))  # type: ignore[attr-defined]

    @router.post(
        "/async/predict",
        response={202: JobAccepted, **with_body, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 429: ErrorOut},
        summary="Queue a job; its result goes to success_queue or failure_queue",
        operation_id="submit_job",
    )
    @decorate_view(ours)
    async def async_predict(
        request: HttpRequest,
        response: HttpResponse,
        payload: async_predict_request,  # type: ignore[valid-type]
        model_name: str | None = None,
        idempotency_key: str | None = idempotency_key_header("job"),
    ) -> Any:
        refuse_unless_utf8(request)
        caller = caller_of(request)
        with http_errors():
            require_pipeline()
            await admit(caller, (payload.success_queue, payload.failure_queue))  # type: ignore[attr-defined]
            job = await asubmit_job(
                model_name=model_name,
                message=payload.message.model_dump(mode="json"),  # type: ignore[attr-defined]
                success_queue=payload.success_queue,  # type: ignore[attr-defined]
                failure_queue=payload.failure_queue,  # type: ignore[attr-defined]
                meta=payload.meta,  # type: ignore[attr-defined]
                owner=caller.owner,
                api_key_prefix=caller.key_prefix,
                idempotency_key=idempotency_key,
                schedule=payload.schedule(),  # type: ignore[attr-defined]
            )
        if job.replayed:
            response["Idempotent-Replayed"] = "true"
        return Status(
            202, {"job_id": job.id, "status": job.status, "model_name": job.model_name, "created_at": job.created_at}
        )

    @router.get(
        "/jobs",
        response={200: job_page_schema(job_out), **common, 404: ErrorOut},
        summary="Your jobs, newest first (404: `before` is not one of them)",
        operation_id="list_jobs",
    )
    @decorate_view(ours)
    async def list_jobs(
        request: HttpRequest,
        status: JobStatus | None = None,
        model_name: str | None = param.Query(None, max_length=100, pattern=NO_NUL),
        limit: int = param.Query(20, ge=1, le=100),
        before: uuid.UUID | None = _PAGE_CURSOR,
    ) -> Any:
        with http_errors():
            jobs, following = await run_sync(
                queries.list_jobs,
                owner=owner_of(request),
                status=status,
                model_name=model_name,
                limit=limit,
                before=before,
            )
        return {"jobs": [_job_out(job) for job in jobs], "next": following.id if following else None}

    @router.get(
        "/jobs/{job_id}",
        response={200: job_out, **common, 404: ErrorOut},
        summary="A job's status and result",
        operation_id="get_job",
    )
    @decorate_view(ours)
    async def get_job(request: HttpRequest, job_id: uuid.UUID) -> Any:
        with http_errors():
            job, outputs = await run_sync(_read_job, job_id, owner_of(request))
        return _job_out(job, outputs)

    @router.post(
        "/jobs/{job_id}/cancel",
        response={200: job_out, **common, 404: ErrorOut, 409: ErrorOut},
        summary="Cancel a job that has not started, or one running on a Modal call",
        operation_id="cancel_job",
    )
    @decorate_view(ours)
    async def cancel_job(request: HttpRequest, job_id: uuid.UUID) -> Any:
        def cancel() -> tuple[Job, list[dict[str, Any]]]:
            job = queries.get_job(job_id=job_id, owner=owner_of(request))
            control.cancel_job(job=job)
            return _read_job(job_id, owner_of(request))

        with http_errors():
            job, outputs = await run_sync(cancel)
        return _job_out(job, outputs)

    add_batch_routes(router, typed, job_out, _job_out)
    add_event_routes(router, common)
    return router
