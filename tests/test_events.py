"""GET /jobs/{id}/events: Server-Sent Events, in process (``test_events_server.py``: through uvicorn)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import AsyncClient

import modalkit_django
from modalkit_django.api import events, watch
from modalkit_django.asgi import ApiHandler
from modalkit_django.models import Job

from . import flow

PIPELINE = "tests.progress_pipelines.StepsPipeline"


def parse(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """SSE events as dicts: ``event``, ``data`` (decoded) and ``id`` when given; comments and
    frames without data (``retry:``) skipped, as EventSource does."""
    frame: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "data" in frame:
                yield frame
            frame = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            frame[name] = json.loads(value) if name == "data" else value


async def aparse(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    frame: list[str] = []
    async for line in lines:
        frame.append(line)
        if not line:
            for event in parse(frame):
                yield event
            frame = []


# --- In process (Django's ASGI handler) -------------------------------------------------


async def _stream(client: AsyncClient, path: str, **headers: str) -> tuple[int, list[dict[str, Any]], Any]:
    response = await client.get(path, headers={**getattr(client, "auth", {}), **headers})
    if response.status_code != 200:
        return response.status_code, [], response
    body = b"".join([chunk async for chunk in response.streaming_content])
    return 200, list(parse(body.decode().split("\n"))), response


@pytest.mark.django_db(transaction=True)
def test_a_finished_jobs_stream_replays_its_outputs_then_ends(run_async: Any, api_key: str, user: Any) -> None:
    job = flow.claim_one(modalkit_django.submit_job(message={"text": "good"}, owner=user))
    Job.objects.filter(id=job.id).update(progress=1.0, progress_message="done")
    flow.give_outputs(job, [{"n": 0}, {"n": 1}])
    flow.finish([(job, flow.OUTPUT)])
    client = AsyncClient()
    client.auth = {"Authorization": f"Bearer {api_key}"}  # type: ignore[attr-defined]

    status, events, response = run_async(_stream, client, f"/api/jobs/{job.id}/events")
    assert (status, response["Content-Type"]) == (200, "text/event-stream")
    assert [event["event"] for event in events] == ["status", "progress", "output", "output", "end"]
    assert events[1]["data"] == {"progress": 1.0, "message": "done"}
    attempt = job.runs
    assert [(event["id"], event["data"]) for event in events[2:4]] == [
        (f"{attempt}:0", {"attempt": attempt, "index": 0, "output": {"n": 0}}),
        (f"{attempt}:1", {"attempt": attempt, "index": 1, "output": {"n": 1}}),
    ]
    assert events[-1]["data"] == {"status": "succeeded", "attempt": attempt, "result": flow.OUTPUT, "error": None}

    # Reconnecting after output 0: the rest only, never output 0 again.
    _, resumed, _ = run_async(_stream, client, f"/api/jobs/{job.id}/events", **{"Last-Event-ID": f"{attempt}:0"})
    assert [event.get("id") for event in resumed if event["event"] == "output"] == [f"{attempt}:1"]
    assert resumed[-1]["event"] == "end"
    # Reconnecting with an id of another attempt (or a bare index, from an earlier version):
    # a reset, then this attempt's outputs from the first.
    for last_seen in (f"{attempt - 1}:5", "5"):
        _, other, _ = run_async(_stream, client, f"/api/jobs/{job.id}/events", **{"Last-Event-ID": last_seen})
        kinds = [event["event"] for event in other]
        assert kinds == ["reset", "status", "progress", "output", "output", "end"]
        assert other[0]["data"] == {"attempt": attempt}


@pytest.mark.django_db(transaction=True)
def test_the_stream_is_the_owners_and_takes_an_attempt_and_index_as_last_event_id(
    run_async: Any, api_key: str, other_user: Any
) -> None:
    theirs = modalkit_django.submit_job(message={"text": "good"}, owner=other_user)
    client = AsyncClient()
    client.auth = {"Authorization": f"Bearer {api_key}"}  # type: ignore[attr-defined]
    assert run_async(_stream, client, f"/api/jobs/{theirs.id}/events")[0] == 404
    assert run_async(_stream, AsyncClient(), f"/api/jobs/{theirs.id}/events")[0] == 401
    status, _, response = run_async(_stream, client, f"/api/jobs/{theirs.id}/events", **{"Last-Event-ID": "abc"})
    assert status == 422, response.content


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("recording_waker")  # no worker runs the job: it stays queued until canceled
def test_watchers_of_a_job_share_one_poll_and_leave_it_when_they_end(run_async: Any, user: Any) -> None:
    job = modalkit_django.submit_job(message={"text": "good"}, owner=user)

    async def watch_three() -> tuple[list[int], list[bytes], int]:
        streams = [events._events(job.id, None, 0) for _ in range(3)]
        firsts = [await anext(stream) for stream in streams]  # retry: and status, read at once

        async def rest(stream: Any) -> bytes:
            return b"".join([chunk async for chunk in stream])

        ends = [asyncio.ensure_future(rest(stream)) for stream in streams]  # watching, from now on
        await asyncio.sleep(0.2)
        poller = watch._pollers[asyncio.get_running_loop()]
        shared = [watched.watchers for watched in poller.jobs.values()]
        await asyncio.to_thread(cancel_in_own_thread, str(job.id))
        return shared, firsts + list(await asyncio.gather(*ends)), len(poller.jobs)

    shared, frames, left = run_async(watch_three)
    assert shared == [3]  # one watched job, three watchers: one query per poll for all of them
    assert all(b'"status": "queued"' in first for first in frames[:3])
    assert all(b"event: end" in end for end in frames[3:])
    assert left == 0


@pytest.mark.django_db(transaction=True)
def test_under_wsgi_the_answer_is_the_jobs_events_now_and_the_client_reconnects(api: Any, user: Any) -> None:
    """Django's WSGI handler would buffer a stream whole: one snapshot instead, then EventSource retries."""
    job = flow.claim_one(modalkit_django.submit_job(message={"text": "good"}, owner=user))
    Job.objects.filter(id=job.id).update(progress=0.5, progress_message="half")
    flow.give_outputs(job, [{"n": 0}, {"n": 1}])

    response = api.get(f"/api/jobs/{job.id}/events", headers={"Last-Event-ID": f"{job.runs}:0"})
    assert (response.status_code, response["Content-Type"]) == (200, "text/event-stream")
    text = response.content.decode()
    assert text.startswith("retry: 1000\nevent: status")  # in the first event's block, not one of its own
    events = list(parse(text.split("\n")))
    assert [(event["event"], event["data"]) for event in events] == [
        ("status", {"status": "running", "attempt": job.runs}),
        ("progress", {"progress": 0.5, "message": "half"}),
        ("output", {"attempt": job.runs, "index": 1, "output": {"n": 1}}),
    ]


@pytest.mark.django_db(databases=["default", "embedded"])
def test_the_poll_and_the_outputs_read_the_embedded_defaults_sqlite_too() -> None:
    # make run's database: found by trying the events stream on a fresh clone (a 503 then).
    job = Job.objects.db_manager("embedded").create(model_name="sentiment", message={"text": "good"}, progress=0.5)
    flow.give_outputs(job, [{"n": 0}, {"n": 1}], using="embedded")
    [row] = watch.read_jobs([job.id], using="embedded").values()
    assert (row["status"], row["progress"], row["output_count"]) == ("queued", 0.5, 2)
    assert events._outputs(job.id, 0, 1, using="embedded") == [{"n": 1}]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("recording_waker")  # the job stays queued: only the disconnect can end the stream
def test_on_the_lean_asgi_path_a_client_that_leaves_ends_its_stream(run_async: Any, api_key: str, user: Any) -> None:
    job = modalkit_django.submit_job(message={"text": "good"}, owner=user)
    scope = {
        "type": "http", "method": "GET", "path": f"/api/jobs/{job.id}/events", "query_string": b"",
        "headers": [(b"authorization", f"Bearer {api_key}".encode()), (b"host", b"testserver")],
        "server": ("testserver", 80), "client": ("127.0.0.1", 5000), "scheme": "http", "root_path": "",
    }  # fmt: skip

    async def leave_after_the_first_event() -> tuple[list[bytes], int]:
        bodies: list[bytes] = []
        left = asyncio.Event()
        requests = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, Any]:
            if requests:
                return requests.pop()
            await left.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                bodies.append(message.get("body", b""))
                if b"event: status" in message.get("body", b""):
                    left.set()

        await asyncio.wait_for(ApiHandler()(scope, receive, send), 30)  # returns: the stream ended
        return bodies, len(watch._pollers[asyncio.get_running_loop()].jobs)

    bodies, watched = run_async(leave_after_the_first_event)
    assert any(b"event: status" in body for body in bodies)
    assert not any(b"event: end" in body for body in bodies)
    assert watched == 0  # nobody watches the job any more


@pytest.mark.django_db
def test_the_openapi_schema_declares_the_stream_and_the_progress_fields(api: Any) -> None:
    schema = api.get("/api/openapi.json").json()
    operation = schema["paths"]["/api/jobs/{job_id}/events"]["get"]
    stream = operation["responses"]["200"]["content"]["text/event-stream"]
    kinds = [item["properties"]["event"]["const"] for item in stream["schema"]["oneOf"]]
    assert kinds == ["status", "progress", "output", "reset", "end"]
    assert "Last-Event-ID" in [parameter["name"] for parameter in operation["parameters"]]
    job = schema["components"]["schemas"]["Job"]["properties"]
    assert {"progress", "progress_message", "partial_outputs"} <= set(job)


def cancel_in_own_thread(job_id: str) -> None:
    try:
        modalkit_django.cancel_job(job=Job.objects.get(id=job_id))
    finally:
        connection.close()


def test_a_client_that_holds_no_outputs_is_sent_no_reset(run_async: Any) -> None:
    """Watching from before the first claim, or through attempts that yielded nothing, there
    is nothing to drop: a reset comes only after outputs of another attempt."""
    stream = events._Stream(uuid.uuid4(), None, 0)
    row = {"status": "queued", "runs": 0, "progress": None, "progress_message": "", "output_count": 0}

    def kinds(**changes: Any) -> list[str]:
        frames, _ = run_async(stream.frames, {**row, **changes})
        return [line.split(": ", 1)[1] for line in frames.decode().splitlines() if line.startswith("event: ")]

    assert kinds() == ["status"]
    assert kinds(status="running", runs=1) == ["status"]
    assert kinds(status="running", runs=2) == ["status"]  # reclaimed before it yielded


def test_a_client_that_named_an_attempt_is_reset_when_another_runs(run_async: Any) -> None:
    stream = events._Stream(uuid.uuid4(), *events._resume_from("1:3"))
    row = {"status": "running", "runs": 2, "progress": None, "progress_message": "", "output_count": 0}
    frames, _ = run_async(stream.frames, row)
    assert frames.decode().count("event: reset") == 1
