"""The HTTP API: a ninja ``Router`` for the host project to mount, e.g. under ``/api/``::

    api = add_error_handlers(NinjaAPI())
    api.add_router("/", build_router())

:func:`add_error_handlers` answers what a router cannot: a database that is briefly
away (restarting, failing over) is a JSON 503 with ``Retry-After``, not a 500.

Views parse input, call one service and shape the answer. Domain errors become
HTTP errors in :func:`http_errors`, the one place that maps them.

No ``from __future__ import annotations`` here: ninja reads the views'
annotations at runtime, and the request schemas are local to :func:`build_router`.
"""

import contextlib
import hmac
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI, Router
from ninja.errors import HttpError
from ninja.params import functions as param
from ninja.responses import Status
from ninja.security import APIKeyHeader, HttpBearer

from . import services
from .clients import get_inference_backend
from .conf import get_config, get_pipeline_class, resolve_model
from .exceptions import (
    IdempotencyConflict,
    InferenceAuthError,
    InferenceError,
    InferenceNotDeployed,
    InferenceTimeout,
    InferenceUnavailable,
    InvalidJobState,
    JobNotFound,
    ModalkitError,
    PipelineError,
    UnknownModel,
)
from .inference.pipeline import InferencePipeline
from .models import Job, JobStatus
from .schemas import (
    NO_NUL,
    ErrorOut,
    JobAccepted,
    async_request_schema,
    job_page_schema,
    job_schema,
    sync_request_schema,
)

__all__ = ["Caller", "add_error_handlers", "build_router", "http_errors"]

logger = logging.getLogger(__name__)

# What a client is told to wait when the database is away: about one restart.
RETRY_AFTER_SECONDS = 5

# Most specific first: the first isinstance match wins.
_STATUS_FOR_ERROR: tuple[tuple[type[ModalkitError], int], ...] = (
    (UnknownModel, 404),
    (JobNotFound, 404),
    (InvalidJobState, 409),
    (IdempotencyConflict, 409),
    (PipelineError, 502),
    (InferenceNotDeployed, 502),
    (InferenceAuthError, 502),
    (InferenceUnavailable, 503),
    (InferenceTimeout, 504),
    # Any other reason the model produced nothing (e.g. an unexpected Modal error).
    (InferenceError, 502),
)


@contextlib.contextmanager
def http_errors() -> Iterator[None]:
    """Turn the domain errors a client can cause or should see into HTTP errors."""
    try:
        yield
    except ModalkitError as exc:
        for error_class, status in _STATUS_FOR_ERROR:
            if isinstance(exc, error_class):
                raise HttpError(status, str(exc)) from exc
        raise


def add_error_handlers(api: NinjaAPI) -> NinjaAPI:
    """Give ``api`` the error answers the router's views rely on; returns ``api``."""

    def database_unavailable(request: HttpRequest, exc: Any) -> HttpResponse:
        logger.warning("Answering 503: the database is unavailable (%s: %s)", type(exc).__name__, exc)
        detail = "The service is briefly unavailable; retry shortly."
        response = api.create_response(request, {"detail": detail}, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    for error in (OperationalError, InterfaceError):
        api.add_exception_handler(error, database_unavailable)
    return api


@dataclass(frozen=True)
class Caller:
    """Who is calling: a user's API key, or ModalKit's static key (no owner)."""

    owner: Any
    key_name: str


class ApiKeyBearer(HttpBearer):
    """``Authorization: Bearer mk_…`` — an :class:`~modalkit_django.models.ApiKey`."""

    def authenticate(self, request: HttpRequest, token: str) -> Caller | None:
        api_key = services.authenticate_api_key(raw_key=token)
        return Caller(owner=api_key.owner, key_name=api_key.name) if api_key else None


def _static_key_auth() -> APIKeyHeader | None:
    """ModalKit's ``auth_config``: one shared key in a header, if configured."""
    auth = get_config().app_settings.auth_config
    if not auth.api_key:
        return None
    expected = auth.api_key.encode()

    class StaticApiKey(APIKeyHeader):
        param_name = auth.auth_header

        def authenticate(self, request: HttpRequest, key: str | None) -> Caller | None:
            if key and hmac.compare_digest(key.encode(), expected):
                return Caller(owner=None, key_name="modalkit.yaml auth_config")
            return None

    return StaticApiKey()


def _owner(request: HttpRequest) -> Any:
    caller: Caller = request.auth  # type: ignore[attr-defined]
    return caller.owner


def _job_out(job: Job) -> dict[str, Any]:
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
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "deliveries": list(job.deliveries.all()),
    }


def build_router(pipeline: type[InferencePipeline] | None = None) -> Router:
    """The API for ``pipeline`` (default: ``MODALKIT["PIPELINE"]``), typed with its schemas."""
    pipeline = pipeline or get_pipeline_class()
    predict_request = sync_request_schema(pipeline.input_model)
    async_predict_request = async_request_schema(pipeline.input_model)
    job_out = job_schema(pipeline.output_model)
    auth = [method for method in (ApiKeyBearer(), _static_key_auth()) if method is not None]
    router = Router(auth=auth, tags=["inference"])
    client_errors = {401: ErrorOut, 404: ErrorOut}

    @router.post(
        "/predict",
        response={200: pipeline.output_model, **client_errors, 502: ErrorOut, 503: ErrorOut, 504: ErrorOut},
        summary="Run the model now and return its output",
    )
    async def predict(request: HttpRequest, payload: predict_request, model_name: str | None = None) -> Any:  # type: ignore[valid-type]
        with http_errors():
            name = resolve_model(model_name)
            return await get_inference_backend().apredict(name, payload.message.model_dump(mode="json"))  # type: ignore[attr-defined]

    @router.post(
        "/async/predict",
        response={202: JobAccepted, **client_errors, 409: ErrorOut},
        summary="Queue a job; its result goes to success_queue or failure_queue",
    )
    async def async_predict(
        request: HttpRequest,
        response: HttpResponse,
        payload: async_predict_request,  # type: ignore[valid-type]
        model_name: str | None = None,
        idempotency_key: str | None = param.Header(
            None,
            alias="Idempotency-Key",
            max_length=255,
            pattern=NO_NUL,
            description="Repeat a request safely: the same key and body return the first job.",
        ),
    ) -> Any:
        with http_errors():
            job = await sync_to_async(services.submit_job)(
                model_name=model_name,
                message=payload.message.model_dump(mode="json"),  # type: ignore[attr-defined]
                success_queue=payload.success_queue,  # type: ignore[attr-defined]
                failure_queue=payload.failure_queue,  # type: ignore[attr-defined]
                meta=payload.meta,  # type: ignore[attr-defined]
                owner=_owner(request),
                idempotency_key=idempotency_key,
            )
        if job.replayed:
            response["Idempotent-Replayed"] = "true"
        return Status(
            202, {"job_id": job.id, "status": job.status, "model_name": job.model_name, "created_at": job.created_at}
        )

    @router.get("/jobs", response={200: job_page_schema(job_out), **client_errors}, summary="Your jobs, newest first")
    async def list_jobs(
        request: HttpRequest,
        status: JobStatus | None = None,
        model_name: str | None = param.Query(None, max_length=100, pattern=NO_NUL),
        limit: int = param.Query(20, ge=1, le=100),
        before: str | None = param.Query(None, description="The `next` of the previous page."),
    ) -> Any:
        with http_errors():
            jobs, following = await sync_to_async(services.list_jobs)(
                owner=_owner(request), status=status, model_name=model_name, limit=limit, before=before
            )
        return {"jobs": [_job_out(job) for job in jobs], "next": following.id if following else None}

    @router.get("/jobs/{job_id}", response={200: job_out, **client_errors}, summary="A job's status and result")
    async def get_job(request: HttpRequest, job_id: str) -> Any:
        with http_errors():
            job = await sync_to_async(services.get_job)(job_id=job_id, owner=_owner(request))
        return _job_out(job)

    @router.post(
        "/jobs/{job_id}/cancel",
        response={200: job_out, **client_errors, 409: ErrorOut},
        summary="Cancel a job that has not started",
    )
    async def cancel_job(request: HttpRequest, job_id: str) -> Any:
        def cancel() -> Job:
            job = services.get_job(job_id=job_id, owner=_owner(request))
            services.cancel_job(job=job)
            return services.get_job(job_id=job_id, owner=_owner(request))

        with http_errors():
            job = await sync_to_async(cancel)()
        return _job_out(job)

    return router
