"""Domain errors as HTTP answers, in one place.

Views raise what the services raise; :func:`http_errors` maps the domain errors a client
can cause or should see, and :func:`add_error_handlers` gives the ``NinjaAPI`` the
answers a router cannot give itself: a database that is briefly away (restarting,
failing over) is a JSON 503 with ``Retry-After``, not a 500.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError, ProgrammingError
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import HttpError

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

__all__ = ["RETRY_AFTER_SECONDS", "add_error_handlers", "http_errors"]

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


def add_error_handlers(api: NinjaAPI) -> NinjaAPI:
    """Give ``api`` the error answers the router's views rely on; returns ``api``.

    Every error is JSON in the API's shape (``{"detail": ...}``), whatever ``DEBUG``
    says: a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is a 413, a limit reached a 429
    with ``Retry-After``, a database that is away a 503 with ``Retry-After``, a database
    not migrated yet a 503 (logged in one line: run ``migrate``), and anything
    unexpected a 500 that carries an error id, logged with the traceback.
    """

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

    def unexpected(request: HttpRequest, exc: Any) -> HttpResponse:
        error_id = uuid.uuid4().hex[:12]
        logger.error("Answering 500 (error id %s) to %s %r", error_id, request.method, request.path, exc_info=exc)
        detail = f"Internal error; quote the error id {error_id} to the service's operators."
        return api.create_response(request, {"detail": detail, "error_id": error_id}, status=500)

    for error in (OperationalError, InterfaceError):
        api.add_exception_handler(error, database_unavailable)
    api.add_exception_handler(ProgrammingError, not_migrated)
    api.add_exception_handler(RequestDataTooBig, too_big)
    api.add_exception_handler(TooManyRequests, too_many)
    api.add_exception_handler(Exception, unexpected)
    return api
