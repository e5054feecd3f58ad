"""``GET /jobs/{id}/events``: a job's status, progress and partial outputs as Server-Sent Events.

::

    retry: 1000

    event: status
    data: {"status": "running"}

    event: progress
    data: {"progress": 0.5, "message": "halfway"}

    id: 0
    event: output
    data: {"index": 0, "output": {...}}

    event: end
    data: {"status": "succeeded", "result": {...}, "error": null}

Only ``output`` events carry an ``id`` (the partial output's index), so a client that
reconnects with ``Last-Event-ID`` gets the outputs after it, and the current status and
progress again, never an output twice. The stream ends after ``end``, or after
``MODALKIT["API"]["EVENTS_MAX_SECONDS"]`` (the client reconnects).

The row is read by one poll per process for every watched job (:mod:`.watch`), on the
API's database threads: a watcher holds no connection between polls, and however many
clients watch, the database sees one small query per half second, plus one read of the
new partial outputs when there are some.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import F, Func, JSONField, Value
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from ninja import Router
from ninja.params import functions as param

from ..conf import get_settings
from ..jobs.queries import get_job
from ..models import FINISHED_JOB_STATUSES, Job
from .auth import owner_of
from .errors import http_errors
from .schemas import ErrorOut
from .threads import run_sync
from .watch import read_jobs, watching

__all__ = ["KEEPALIVE_SECONDS", "add_event_routes"]

# A comment this often on a quiet stream, so that proxies do not close it as idle.
KEEPALIVE_SECONDS = 15.0
# The largest index a JSON path can address (PostgreSQL's int4), less one.
MAX_EVENT_ID = 2**31 - 2
# What EventSource waits before reconnecting, in milliseconds.
RETRY_MILLISECONDS = 1000

_DESCRIPTION = """\
`text/event-stream` until the job ends. Events: `status` `{"status"}`, `progress`
`{"progress", "message"}`, `output` `{"index", "output"}` (a partial output; its `id` is
`index`), and last `end` `{"status", "result", "error"}`. Send `Last-Event-ID` (the last
`output` index you have) to resume without duplicates."""


def _event(name: str, data: dict[str, Any], *, with_id: bool = False) -> dict[str, Any]:
    """One kind of event, as OpenAPI 3.2 describes a ``text/event-stream`` item."""
    properties: dict[str, Any] = {
        "event": {"const": name},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
    }
    if with_id:
        properties["id"] = {"type": "string", "description": "The partial output's index."}
    return {"type": "object", "required": ["event", "data"], "properties": properties}


_NUMBER_OR_NULL = {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}]}
_OBJECT_OR_NULL = {"anyOf": [{"type": "object"}, {"type": "null"}]}
_EVENTS = [
    _event("status", {"type": "object", "properties": {"status": {"type": "string"}}}),
    _event("progress", {"type": "object", "properties": {"progress": _NUMBER_OR_NULL, "message": {"type": "string"}}}),
    _event(
        "output",
        {"type": "object", "properties": {"index": {"type": "integer"}, "output": {"type": "object"}}},
        with_id=True,
    ),
    _event(
        "end",
        {
            "type": "object",
            "properties": {"status": {"type": "string"}, "result": _OBJECT_OR_NULL, "error": _OBJECT_OR_NULL},
        },
    ),
]
_OPENAPI = {
    "responses": {
        "200": {
            "description": "The job's events",
            # OpenAPI 3.2's way: each event (not the stream) is described.
            "content": {"text/event-stream": {"itemSchema": {"oneOf": _EVENTS}}},
        }
    }
}


def add_event_routes(router: Router, common: dict[int, Any]) -> None:
    """Add ``GET /jobs/{job_id}/events`` to the API's router."""

    @router.get(
        "/jobs/{job_id}/events",
        response={**common, 404: ErrorOut},
        summary="Stream a job's status, progress and partial outputs (Server-Sent Events)",
        description=_DESCRIPTION,
        openapi_extra=_OPENAPI,
    )
    async def job_events(
        request: HttpRequest,
        job_id: str,
        last_event_id: int | None = param.Header(
            None,
            alias="Last-Event-ID",
            ge=-1,
            le=MAX_EVENT_ID,
            description="The index of the last partial output received.",
        ),
    ) -> Any:
        with http_errors():
            job = await run_sync(get_job, job_id=job_id, owner=owner_of(request))
        start = 0 if last_event_id is None else last_event_id + 1
        response: HttpResponseBase
        if isinstance(request, ASGIRequest):
            response = StreamingHttpResponse(_events(job.id, start), content_type="text/event-stream")
        else:
            response = HttpResponse(await _snapshot(job.id, start), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        # nginx would otherwise hold events back in its buffer.
        response["X-Accel-Buffering"] = "no"
        return response


def _frame(event: str, data: Any, event_id: int | None = None) -> bytes:
    lines = [] if event_id is None else [f"id: {event_id}"]
    lines += [f"event: {event}", f"data: {json.dumps(data, cls=DjangoJSONEncoder)}"]
    return ("\n".join(lines) + "\n\n").encode()


def _outputs(job_id: uuid.UUID, start: int, using: str = DEFAULT_DB_ALIAS) -> list[dict[str, Any]]:
    """The job's partial outputs from index ``start`` on."""
    jobs = Job.objects.using(using).filter(id=job_id)
    if connections[using].vendor != "postgresql":
        # The embedded default (SQLite) has no JSON path slices: the list, cut here.
        return list(jobs.values_list("partial_outputs", flat=True).first() or [])[start:]
    path = Value(f"$[{int(start)} to last]")
    outputs = (
        jobs.annotate(
            new_outputs=Func(
                F("partial_outputs"),
                path,
                function="jsonb_path_query_array",
                template="%(function)s(%(expressions)s::jsonpath)",
                output_field=JSONField(),
            )
        )
        .values_list("new_outputs", flat=True)
        .first()
    )
    return list(outputs or [])


def _outcome(job_id: uuid.UUID) -> dict[str, Any] | None:
    outcome = Job.objects.filter(id=job_id).values("status", "result", "error").first()
    return dict(outcome) if outcome is not None else None


class _Stream:
    """What one client has been sent: the frames for each new reading of its job's row."""

    def __init__(self, job_id: uuid.UUID, start: int) -> None:
        self.job_id = job_id
        self.start = start  # the next partial output's index
        # No progress event until the pipeline reports some.
        self.last: dict[str, Any] = {"progress": None, "progress_message": ""}

    async def frames(self, row: dict[str, Any] | None) -> tuple[bytes, bool]:
        """The frames that ``row`` calls for, and whether the stream is over."""
        if row is None:  # deleted meanwhile
            return _frame("end", {"status": None, "result": None, "error": None}), True
        frames = []
        if row["status"] != self.last.get("status"):
            frames.append(_frame("status", {"status": row["status"]}))
        if (row["progress"], row["progress_message"]) != (self.last.get("progress"), self.last.get("progress_message")):
            frames.append(_frame("progress", {"progress": row["progress"], "message": row["progress_message"]}))
        self.last = row
        if (row["output_count"] or 0) > self.start:
            # Read now, so possibly more than the poll counted: all are sent, once.
            outputs = await run_sync(_outputs, self.job_id, self.start)
            for index, output in enumerate(outputs, self.start):
                frames.append(_frame("output", {"index": index, "output": output}, event_id=index))
            self.start += len(outputs)
        finished = row["status"] in FINISHED_JOB_STATUSES
        if finished:
            frames.append(_frame("end", await run_sync(_outcome, self.job_id)))
        return b"".join(frames), finished


_RETRY = f"retry: {RETRY_MILLISECONDS}\n\n".encode()


async def _events(job_id: uuid.UUID, start: int) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + get_settings().api.events_max_seconds
    stream = _Stream(job_id, start)
    yield _RETRY
    async with watching(job_id) as watched:
        seen = 0
        while True:
            remaining = ends_at - loop.time()
            if remaining <= 0:
                return
            if not await watched.changed(seen, min(KEEPALIVE_SECONDS, remaining)):
                yield b": keep-alive\n\n"
                continue
            seen = watched.version
            chunk, finished = await stream.frames(watched.row)
            if chunk:
                yield chunk
            if finished:
                return


async def _snapshot(job_id: uuid.UUID, start: int) -> bytes:
    """Under WSGI, where a stream would hold a worker thread (and Django would buffer it
    whole): the events of the job as it is now, then the connection closes and EventSource
    reconnects after ``retry`` with ``Last-Event-ID``. Polling, in effect."""
    rows = await run_sync(read_jobs, [job_id])
    chunk, _ = await _Stream(job_id, start).frames(rows.get(job_id))
    return _RETRY + chunk
