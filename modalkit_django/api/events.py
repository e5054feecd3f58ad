"""``GET /jobs/{id}/events``: a job's status, progress and partial outputs as Server-Sent Events.

::

    retry: 1000
    event: status
    data: {"status": "running", "attempt": 2}

    event: progress
    data: {"progress": 0.5, "message": "halfway"}

    id: 2:0
    event: output
    data: {"attempt": 2, "index": 0, "output": {...}}

    event: reset
    data: {"attempt": 3}

    event: end
    data: {"status": "succeeded", "attempt": 3, "result": {...}, "error": null}

Partial outputs belong to one attempt (a run of the job: ``Job.runs``, re-runs included).
When the job is run again (a retry after a transient error, a reclaimed lease, a re-run),
a ``reset`` event says so: drop what the earlier attempt yielded, its outputs start again
from index 0. Each ``output`` carries its attempt, in its data and in its ``id``
(``attempt:index``), so a client that reconnects with ``Last-Event-ID`` gets the outputs
after it in the same attempt, or a ``reset`` and the new attempt's from the first: never
two attempts spliced, never an output twice. The stream ends after ``end``, or after
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
from django.db import DEFAULT_DB_ALIAS
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from ninja import Router
from ninja.decorators import decorate_view
from ninja.params import functions as param

from ..conf import get_settings
from ..jobs.queries import get_job
from ..models import FINISHED_JOB_STATUSES, Job, JobOutput, JobStatus
from .auth import owner_of
from .errors import http_errors, ours
from .schemas import ErrorOut
from .threads import run_sync
from .watch import read_jobs, watching

__all__ = ["KEEPALIVE_SECONDS", "add_event_routes"]

# A comment this often on a quiet stream, so that proxies do not close it as idle.
KEEPALIVE_SECONDS = 15.0
# Last-Event-ID as this stream writes it: ``attempt:index`` (a bare index, from a client of
# an earlier version, is of an attempt it cannot name: the stream starts it again).
EVENT_ID = r"^(\d{1,9}:)?-?\d{1,10}$"
# What EventSource waits before reconnecting, in milliseconds.
RETRY_MILLISECONDS = 1000

_DESCRIPTION = """\
`text/event-stream` until the job ends. Events: `status` `{"status", "attempt"}`, `progress`
`{"progress", "message"}`, `output` `{"attempt", "index", "output"}` (a partial output; its
`id` is `attempt:index`), `reset` `{"attempt"}` (the job runs again: drop the outputs you
have, the new attempt's start from index 0), and last `end` `{"status", "attempt", "result",
"error"}`. Send `Last-Event-ID` (the `id` of the last `output` you have) to resume without
duplicates and without two attempts' outputs spliced."""


def _event(name: str, data: dict[str, Any], description: str, *, with_id: bool = False) -> dict[str, Any]:
    """One kind of event: its ``event`` name, and its ``data``, a line of JSON."""
    properties: dict[str, Any] = {
        "event": {"const": name},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
    }
    if with_id:
        properties["id"] = {"type": "string", "description": "The partial output's attempt and index: `attempt:index`."}
    return {
        "title": f"{name} event",
        "description": description,
        "type": "object",
        "required": ["event", "data"],
        "properties": properties,
    }


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(properties), "properties": properties}


_ATTEMPT = {"type": "integer", "description": "The run of the job (re-runs included) the event is of."}
_STATUS = {"type": "string", "enum": [status.value for status in JobStatus]}
_OBJECT_OR_NULL = {"anyOf": [{"type": "object"}, {"type": "null"}]}
_EVENTS = [
    _event("status", _object(status=_STATUS, attempt=_ATTEMPT), "The job's status changed, or it runs again."),
    _event(
        "progress",
        _object(
            progress={"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}]},
            message={"type": "string"},
        ),
        "What the running pipeline said of its progress.",
    ),
    _event(
        "output",
        _object(attempt=_ATTEMPT, index={"type": "integer", "minimum": 0}, output={"type": "object"}),
        "A partial output of the attempt, from index 0.",
        with_id=True,
    ),
    _event(
        "reset",
        _object(attempt=_ATTEMPT),
        "The job runs again: drop the outputs you have; the new attempt's start from index 0.",
    ),
    _event(
        "end",
        _object(
            status={"anyOf": [_STATUS, {"type": "null"}]},
            attempt={"anyOf": [_ATTEMPT, {"type": "null"}]},
            result=_OBJECT_OR_NULL,
            error=_OBJECT_OR_NULL,
        ),
        "The last event: the job ended (or was deleted: every field null).",
    ),
]
# OpenAPI 3.1 has no way to describe the items of a stream (3.2 adds ``itemSchema``): the
# media type's schema describes one event of it, as django-ninja describes its own SSE
# responses, so that it validates as 3.1 and the event list stays in the document.
_OPENAPI = {
    "responses": {
        "200": {
            "description": "The job's events, as Server-Sent Events (`text/event-stream`) until it ends",
            "content": {
                "text/event-stream": {
                    "schema": {"description": "One event of the stream, by its `event` name.", "oneOf": _EVENTS}
                }
            },
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
        operation_id="stream_job_events",
    )
    @decorate_view(ours)
    async def job_events(
        request: HttpRequest,
        job_id: uuid.UUID,
        last_event_id: str | None = param.Header(
            None,
            alias="Last-Event-ID",
            pattern=EVENT_ID,
            description="The `id` of the last output received (`attempt:index`).",
        ),
    ) -> Any:
        with http_errors():
            job = await run_sync(get_job, job_id=job_id, owner=owner_of(request))
        resume = _resume_from(last_event_id)
        response: HttpResponseBase
        if isinstance(request, ASGIRequest):
            response = StreamingHttpResponse(_events(job.id, *resume), content_type="text/event-stream")
        else:
            response = HttpResponse(await _snapshot(job.id, *resume), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        # nginx would otherwise hold events back in its buffer.
        response["X-Accel-Buffering"] = "no"
        return response


# The attempt of outputs a client has but cannot name (a bare index, from an earlier
# version's stream): no attempt is numbered so, so the stream resets it.
UNNAMED_ATTEMPT = -1


def _resume_from(last_event_id: str | None) -> tuple[int | None, int]:
    """The attempt whose outputs the client has, and the index of the next to send, from
    ``Last-Event-ID``; ``None``: it has none (a first connection)."""
    if last_event_id is None:
        return None, 0
    if ":" not in last_event_id:
        return UNNAMED_ATTEMPT, 0
    attempt, index = last_event_id.split(":")
    return int(attempt), int(index) + 1


def _frame(event: str, data: Any, event_id: str | None = None) -> bytes:
    lines = [] if event_id is None else [f"id: {event_id}"]
    lines += [f"event: {event}", f"data: {json.dumps(data, cls=DjangoJSONEncoder)}"]
    return ("\n".join(lines) + "\n\n").encode()


def _outputs(job_id: uuid.UUID, attempt: int, start: int, using: str = DEFAULT_DB_ALIAS) -> list[dict[str, Any]]:
    """The job's partial outputs of ``attempt`` from index ``start`` on."""
    rows = JobOutput.objects.using(using).filter(job_id=job_id, run=attempt, seq__gte=start)
    return list(rows.order_by("seq").values_list("output", flat=True))


def _outcome(job_id: uuid.UUID) -> dict[str, Any] | None:
    outcome = Job.objects.filter(id=job_id).values("status", "runs", "result", "error").first()
    if outcome is None:
        return None
    return {
        "status": outcome["status"],
        "attempt": outcome["runs"],
        "result": outcome["result"],
        "error": outcome["error"],
    }


class _Stream:
    """What one client has been sent: the frames for each new reading of its job's row."""

    def __init__(self, job_id: uuid.UUID, attempt: int | None, start: int) -> None:
        self.job_id = job_id
        self.attempt = attempt  # the attempt the client follows (None: none yet)
        self.start = start  # the next partial output's index in that attempt
        # Whether the client holds outputs of ``attempt``: those its Last-Event-ID named,
        # or some this stream sent. Only then does a new attempt need a reset.
        self.holding = attempt is not None
        # No progress event until the pipeline reports some.
        self.last: dict[str, Any] = {"progress": None, "progress_message": ""}
        # The first frame carries the reconnection delay (a block of its own would read as
        # an empty event to some clients).
        self.prefix = f"retry: {RETRY_MILLISECONDS}\n".encode()

    async def frames(self, row: dict[str, Any] | None) -> tuple[bytes, bool]:
        """The frames that ``row`` calls for, and whether the stream is over."""
        if row is None:  # deleted meanwhile
            return self._frame("end", {"status": None, "attempt": None, "result": None, "error": None}), True
        frames = []
        if row["runs"] != self.attempt:
            if self.holding:
                # Outputs the client has are another attempt's: it drops them.
                frames.append(self._frame("reset", {"attempt": row["runs"]}))
            self.attempt, self.start, self.holding = row["runs"], 0, False
        if row["status"] != self.last.get("status") or row["runs"] != self.last.get("runs"):
            frames.append(self._frame("status", {"status": row["status"], "attempt": row["runs"]}))
        if (row["progress"], row["progress_message"]) != (self.last.get("progress"), self.last.get("progress_message")):
            frames.append(self._frame("progress", {"progress": row["progress"], "message": row["progress_message"]}))
        self.last = row
        if (row["output_count"] or 0) > self.start:
            # Read now, so possibly more than the poll counted: all are sent, once. A read
            # after the job ran again finds none of this attempt's: the next poll resets.
            outputs = await run_sync(_outputs, self.job_id, self.attempt, self.start)
            for index, output in enumerate(outputs, self.start):
                data = {"attempt": self.attempt, "index": index, "output": output}
                frames.append(self._frame("output", data, event_id=f"{self.attempt}:{index}"))
            self.start += len(outputs)
            self.holding = self.holding or bool(outputs)
        finished = row["status"] in FINISHED_JOB_STATUSES
        if finished:
            frames.append(self._frame("end", await run_sync(_outcome, self.job_id)))
        return b"".join(frames), finished

    def _frame(self, event: str, data: Any, event_id: str | None = None) -> bytes:
        frame, self.prefix = self.prefix + _frame(event, data, event_id), b""
        return frame


async def _events(job_id: uuid.UUID, attempt: int | None, start: int) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + get_settings().api.events_max_seconds
    stream = _Stream(job_id, attempt, start)
    # The job as it is now, read at once: a reconnect to a job that already ended gets its
    # end without waiting for the watchers' next poll.
    rows = await run_sync(read_jobs, [job_id])
    chunk, finished = await stream.frames(rows.get(job_id))
    yield chunk
    if finished:
        return
    async with watching(job_id) as watched:
        seen = watched.version
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


async def _snapshot(job_id: uuid.UUID, attempt: int | None, start: int) -> bytes:
    """Under WSGI, where a stream would hold a worker thread (and Django would buffer it
    whole): the events of the job as it is now, then the connection closes and EventSource
    reconnects after ``retry`` with ``Last-Event-ID``. Polling, in effect."""
    rows = await run_sync(read_jobs, [job_id])
    chunk, _ = await _Stream(job_id, attempt, start).frames(rows.get(job_id))
    return chunk
