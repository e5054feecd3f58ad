"""Domain errors as HTTP answers, in one place, for the API's routes only.

Views raise what the services raise; :func:`http_errors` maps the domain errors a client
can cause or should see, and :func:`add_error_handlers` gives the ``NinjaAPI`` the
answers a router cannot give itself: a database that is briefly away (restarting,
failing over) is a JSON 503 with ``Retry-After``, not a 500.

Those answers are the API's, not the host's: a ``NinjaAPI`` of the host's that mounts
:func:`~modalkit_django.api.build_router` keeps its own handlers (and Django's 500, with
``got_request_exception``) for its own routes. Each of the API's operations marks its
request (:func:`ours`), and only a marked request's error is answered here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError, ProgrammingError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import HttpError, ValidationError

from ..exceptions import (
    BatchNotFound,
    IdempotencyConflict,
    InferenceAuthError,
    InferenceError,
    InferenceNotDeployed,
    InferenceTimeout,
    InferenceUnavailable,
    InvalidJobState,
    JobNotFound,
    ModalkitError,
    ModalkitImproperlyConfigured,
    PipelineError,
    UnknownModel,
)
from ..redaction import redact_text
from .admission import TooManyRequests

__all__ = ["ANSWERED", "RETRY_AFTER_SECONDS", "add_error_handlers", "http_errors", "ours"]

logger = logging.getLogger(__name__)

# What a client is told to wait when the database is away: about one restart.
RETRY_AFTER_SECONDS = 5
# PostgreSQL's SQLSTATE for a table that does not exist.
UNDEFINED_TABLE = "42P01"

# Most specific first: the first isinstance match wins.
_STATUS_FOR_ERROR: tuple[tuple[type[ModalkitError], int], ...] = (
    (UnknownModel, 404),
    (JobNotFound, 404),
    (BatchNotFound, 404),
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

MISCONFIGURED = "The service is misconfigured; its operators can see why with `manage.py check`."


@contextlib.contextmanager
def http_errors() -> Iterator[None]:
    """Turn the domain errors a client can cause or should see into HTTP errors."""
    try:
        yield
    except ModalkitImproperlyConfigured as exc:
        # The operators' problem, not the client's: the details go to the log, on one line
        # (no traceback: the message says it all) and without the credentials URLs carry.
        logger.error("Answering 503, the service is misconfigured: %s", " ".join(redact_text(str(exc)).split()))
        raise HttpError(503, MISCONFIGURED) from exc
    except ModalkitError as exc:
        for error_class, status in _STATUS_FOR_ERROR:
            if isinstance(exc, error_class):
                raise HttpError(status, str(exc)) from exc
        raise


# Set on the requests of the API's own operations (``ours``).
_OURS = "_modalkit_api_route"

# Every NinjaAPI given the API's answers: the app's own, and a host's on the manual path
# (a system check looks at those under ATOMIC_REQUESTS).
ANSWERED: weakref.WeakSet[NinjaAPI] = weakref.WeakSet()

Run = Callable[..., Awaitable[HttpResponse]]


def ours(run: Run) -> Run:
    """``decorate_view(ours)``: the operation is the API's, so :func:`add_error_handlers`
    answers its errors, and the host's handlers do not."""

    @functools.wraps(run)
    async def run_ours(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        setattr(request, _OURS, True)
        return await run(request, *args, **kwargs)

    return run_ours


def add_error_handlers(api: NinjaAPI) -> NinjaAPI:
    """Give ``api`` the error answers the router's views rely on, for the router's own
    operations only; returns ``api``. Idempotent.

    Every error of theirs is JSON in the API's shape (``{"detail": ...}``), whatever
    ``DEBUG`` says: a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is a 413, a limit reached
    a 429 with ``Retry-After``, a database that is away a 503 with ``Retry-After``, a
    database not migrated yet a 503 (logged in one line: run ``migrate``), and anything
    unexpected a 500 that carries an error id, logged with the traceback. The
    other routes of ``api`` keep the handlers ``api`` has, whenever they were added.
    """
    theirs = api.on_exception
    if getattr(theirs, _OURS, False):
        return api
    answer = _answers(api)

    def on_exception(request: HttpRequest, exc: Exception) -> HttpResponse:
        if getattr(request, _OURS, False):
            return answer(request, exc)
        return theirs(request, exc)

    setattr(on_exception, _OURS, True)
    ANSWERED.add(api)
    # The instance's own on_exception, called by every operation of this API: ninja
    # offers no per-router handlers, and a handler added per class would also take the
    # host's routes (or be replaced by the host's own catch-all).
    api.on_exception = on_exception  # type: ignore[method-assign,assignment]
    return api


Handler = Callable[[HttpRequest, Any], HttpResponse]


def _answers(api: NinjaAPI) -> Handler:
    """What the API answers to an error of one of its operations."""

    def database_unavailable(request: HttpRequest, exc: Any) -> HttpResponse:
        logger.warning("Answering 503: the database is unavailable (%s: %s)", type(exc).__name__, exc)
        detail = "The service is briefly unavailable; retry shortly."
        response = api.create_response(request, {"detail": detail}, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    def not_migrated(request: HttpRequest, exc: Any) -> HttpResponse:
        # PostgreSQL's undefined_table: the tables of a migration not applied yet (SQLite's
        # "no such table" is an OperationalError, answered above). Any other is a bug: a 500.
        if getattr(exc.__cause__, "sqlstate", None) != UNDEFINED_TABLE:
            return unexpected(request, exc)
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logger.error("Answering 503, the database is not migrated (%s): run `manage.py migrate`", problem)
        detail = "The service is briefly unavailable; retry shortly."
        response = api.create_response(request, {"detail": detail}, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    def too_big(request: HttpRequest, exc: Any) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return api.create_response(request, {"detail": f"The request body is over {limit} bytes."}, status=413)

    def too_many(request: HttpRequest, exc: Any) -> HttpResponse:
        response = api.create_response(request, {"detail": exc.message}, status=429)
        response["Retry-After"] = str(exc.retry_after)
        return response

    # ninja's own answers, as its default handlers give them (the host may have changed
    # its API's): an HTTP error, invalid parameters, a 404.
    def http_error(request: HttpRequest, exc: Any) -> HttpResponse:
        return api.create_response(request, {"detail": str(exc)}, status=exc.status_code)

    def invalid(request: HttpRequest, exc: Any) -> HttpResponse:
        return api.create_response(request, {"detail": exc.errors}, status=422)

    def not_found(request: HttpRequest, exc: Any) -> HttpResponse:
        return api.create_response(request, {"detail": "Not Found"}, status=404)

    def unexpected(request: HttpRequest, exc: Any) -> HttpResponse:
        error_id = uuid.uuid4().hex[:12]
        logger.error("Answering 500 (error id %s) to %s %r", error_id, request.method, request.path, exc_info=exc)
        detail = f"Internal error; quote the error id {error_id} to the service's operators."
        return api.create_response(request, {"detail": detail, "error_id": error_id}, status=500)

    handlers: dict[type[Exception], Handler] = {
        OperationalError: database_unavailable,
        InterfaceError: database_unavailable,
        ProgrammingError: not_migrated,
        RequestDataTooBig: too_big,
        TooManyRequests: too_many,
        HttpError: http_error,
        ValidationError: invalid,
        Http404: not_found,
        Exception: unexpected,
    }

    def answer(request: HttpRequest, exc: Exception) -> HttpResponse:
        handler = next(handlers[cls] for cls in type(exc).__mro__ if cls in handlers)
        return handler(request, exc)

    return answer
