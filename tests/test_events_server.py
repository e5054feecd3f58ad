"""GET /jobs/{id}/events through uvicorn (the lean ASGI path), with a real worker and httpx."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection

from .conftest import ROOT, wait_until
from .private_services import free_port
from .test_events import PIPELINE, aparse, cancel_in_own_thread, parse


@pytest.fixture
def server(redis_broker: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """uvicorn serving the project (the API on its lean ASGI path), on a pool of two connections."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "MODALKIT_TEST_DATABASE_NAME": connection.settings_dict["NAME"],
        "MODALKIT_TEST_BROKER_URL": redis_broker["url"],
        "MODALKIT_TEST_BROKER_QUEUE": redis_broker["queue"],
        "MODALKIT_TEST_PIPELINE": PIPELINE,
        "DATABASE_POOL_SIZE": "2",
    }
    log = (tmp_path / "uvicorn.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "project.asgi:application", "--port", str(port), "--no-access-log"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/api/docs").status_code == 200
        except httpx.TransportError:
            return process.poll() is not None  # exited: fail below with its log

    wait_until(up, timeout=30, interval=0.1, what="uvicorn to start")
    assert process.poll() is None, (tmp_path / "uvicorn.log").read_text()
    yield url
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=20)
    log.close()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_running_jobs_progress_streams_in_order_and_shows_in_get_job(
    server: str, start_worker: Any, api_key: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    auth = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=server, headers=auth, timeout=30) as client:
        submitted = client.post("/api/async/predict", json={"message": {"text": f"steps 3 {gate} good"}})
        job_id = submitted.json()["job_id"]
        events: list[dict[str, Any]] = []
        while_running: dict[str, Any] = {}
        with client.stream("GET", f"/api/jobs/{job_id}/events") as response:
            assert response.headers["content-type"] == "text/event-stream"
            for event in parse(response.iter_lines()):
                events.append(event)
                if event["event"] == "status" and event["data"]["status"] == "queued":
                    start_worker(MODALKIT_TEST_PIPELINE=PIPELINE)  # watching before the job runs
                if event["event"] == "output" and event["data"]["index"] == 2:
                    while_running = client.get(f"/api/jobs/{job_id}").json()
                    gate.touch()  # now let the pipeline return
                if event["event"] == "end":
                    break
        # Reconnecting with the last output's id: no output again, straight to the end.
        last_id = [event["id"] for event in events if event["event"] == "output"][-1]
        with client.stream("GET", f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": last_id}) as response:
            resumed = list(parse(response.iter_lines()))

    assert (while_running["status"], while_running["progress"]) == ("running", 1.0)
    assert while_running["progress_message"] == "step 3 of 3"
    assert while_running["partial_outputs"] == [{"step": 1}, {"step": 2}, {"step": 3}]
    statuses = [event["data"]["status"] for event in events if event["event"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    outputs = [event for event in events if event["event"] == "output"]
    assert [(event["id"], event["data"]["output"]) for event in outputs] == [
        ("1:0", {"step": 1}), ("1:1", {"step": 2}), ("1:2", {"step": 3}),
    ]  # fmt: skip
    progress = [event["data"]["progress"] for event in events if event["event"] == "progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert events[-1]["data"]["result"]["sentiment"] == "positive"
    assert [event["event"] for event in resumed] == ["status", "progress", "end"]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_fifty_watchers_share_a_pool_of_two_connections(server: str, api_key: str) -> None:
    """No stream holds a connection between polls: 50 watch a queued job on a pool of two,
    a plain request is still served meanwhile, and all 50 see it end."""
    auth = {"Authorization": f"Bearer {api_key}"}
    job_id = httpx.post(f"{server}/api/async/predict", json={"message": {"text": "good"}}, headers=auth).json()[
        "job_id"
    ]
    watching = 0

    async def watch(client: httpx.AsyncClient, everyone: asyncio.Event) -> list[str]:
        nonlocal watching
        seen = []
        async with client.stream("GET", f"/api/jobs/{job_id}/events") as response:
            async for event in aparse(response.aiter_lines()):
                seen.append(event["event"])
                if event["event"] == "status" and event["data"]["status"] == "queued":
                    watching += 1
                    if watching == 50:
                        everyone.set()
                if event["event"] == "end":
                    break
        return seen

    async def run() -> tuple[list[list[str]], int]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(base_url=server, headers=auth, timeout=60, limits=limits) as client:
            everyone = asyncio.Event()
            watchers = [asyncio.create_task(watch(client, everyone)) for _ in range(50)]
            await asyncio.wait_for(everyone.wait(), 60)
            plain = (await client.get(f"/api/jobs/{job_id}")).status_code
            await asyncio.to_thread(cancel_in_own_thread, job_id)
            return list(await asyncio.gather(*watchers)), plain

    seen, plain = asyncio.run(run())
    assert plain == 200
    assert all(events[0] == "status" and events[-1] == "end" for events in seen)
    assert len(seen) == 50
