"""Faults caused for real, with the shipped timers: every accepted job ends, none is lost.

Each scenario runs the whole service as processes (web server, worker) against a
PostgreSQL and a Redis of its own, which it kills or stops and starts again; it measures
how long after the fault every accepted job reached a final state. These take minutes,
so they run in ``make faults`` (and in CI), not in ``make test``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from .conftest import ROOT
from .private_services import PrivatePostgres, PrivateRedis, free_port

pytestmark = pytest.mark.faults

# The target of the engine's design: after any single fault, every accepted job settled
# within 60 s of the fault ending.
SETTLED_WITHIN = 60.0
FINAL = ("succeeded", "failed", "expired", "canceled")


class Stack:
    """The service as its users run it: a web server and workers, on private PostgreSQL and Redis."""

    def __init__(self, postgres: PrivatePostgres, redis: PrivateRedis, tmp: Path) -> None:
        self.postgres = postgres
        self.redis = redis
        self.tmp = tmp
        database = f"faults_{uuid.uuid4().hex[:8]}"
        self.database_url = postgres.create_database(database)
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "TEST_DATABASE_URL": self.database_url,
            "MODALKIT_TEST_DATABASE_NAME": database,
            "MODALKIT_TEST_BROKER_URL": redis.url,
            "MODALKIT_TEST_BROKER_QUEUE": "modalkit-faults",
            "MODALKIT_TEST_WORKER": "{}",  # the shipped timers
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []
        self.manage("migrate", "--noinput")
        [line] = [line for line in self.manage("demo_setup").splitlines() if line.startswith("API key:")]
        self.api_key = line.removeprefix("API key: ")
        self.port = free_port()

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def spawn(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("ab")
        self.logs.append(log)
        process = subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        return self.spawn("worker", "taskiq", "worker", "--workers", "1", "--log-level", "WARNING", **env)

    def start_server(self) -> None:
        self.spawn("server", "runserver", f"127.0.0.1:{self.port}", "--noreload")
        with self.client() as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/api/docs").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=30,
        )

    def statuses(self, job_ids: list[str]) -> dict[str, str]:
        with psycopg.connect(self.database_url) as connection:
            rows = connection.execute(
                "SELECT id::text, status FROM modalkit_django_job WHERE id = ANY(%s::uuid[])", [job_ids]
            ).fetchall()
        return dict(rows)

    def wait_settled(self, job_ids: list[str], *, since: float) -> float:
        """Seconds from ``since`` until every job is final; fails past SETTLED_WITHIN."""
        while True:
            statuses = self.statuses(job_ids)
            if len(statuses) == len(job_ids) and all(status in FINAL for status in statuses.values()):
                return time.monotonic() - since
            waited = time.monotonic() - since
            if waited > SETTLED_WITHIN + 30:
                counts = {status: list(statuses.values()).count(status) for status in set(statuses.values())}
                pytest.fail(f"after {waited:.0f}s: {counts}, {len(job_ids) - len(statuses)} missing")
            time.sleep(0.5)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        for log in self.logs:
            log.close()


def children(pid: int) -> set[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return {int(line) for line in result.stdout.split()}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    postgres, redis = PrivatePostgres(), PrivateRedis()
    postgres.start()
    redis.start()
    built = None
    try:
        built = Stack(postgres, redis, tmp_path)
        yield built
    finally:
        if built is not None:
            built.stop()
        redis.stop()
        postgres.destroy()


class Submitter(threading.Thread):
    """Posts jobs to the API as fast as ``rate`` allows until stopped; keeps every answer."""

    def __init__(self, stack: Stack, *, rate: float, text: str = "good") -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.interval = 1 / rate
        self.text = text
        self.accepted: list[str] = []
        self.answers: list[tuple[int, str, str | None]] = []
        self.latencies: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with self.stack.client() as client:
            while not self.halt.is_set():
                started = time.monotonic()
                try:
                    response = client.post("/api/async/predict", json={"message": {"text": self.text}})
                    self.latencies.append(time.monotonic() - started)
                except httpx.TransportError as exc:
                    self.answers.append((0, repr(exc), None))
                else:
                    self.answers.append((response.status_code, response.text, response.headers.get("retry-after")))
                    if response.status_code == 202:
                        self.accepted.append(response.json()["job_id"])
                time.sleep(self.interval)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=60)


def report(name: str, **figures: Any) -> None:
    print(f"\nFAULT {name}: {json.dumps(figures)}")


def test_a_worker_killed_mid_batch(stack: Stack) -> None:
    first = stack.start_worker(MODALKIT_TEST_PIPELINE="tests.pipelines.SleepPipeline")
    stack.start_server()
    runs = stack.tmp / "runs.log"
    with stack.client() as client:
        # 100 ms each, in batches of up to 100: the worker is mid-batch for seconds at a time.
        job_ids = [
            client.post("/api/async/predict", json={"message": {"text": f"sleep 0.1 {runs} {n}"}}).json()["job_id"]
            for n in range(150)
        ]
    deadline = time.monotonic() + 30
    while "running" not in stack.statuses(job_ids).values():
        assert time.monotonic() < deadline, "nothing started"
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # no cleanup, no acknowledgement, leases left held
    killed_at = time.monotonic()
    stack.start_worker(MODALKIT_TEST_PIPELINE="tests.pipelines.SleepPipeline")  # its replacement
    settled = stack.wait_settled(job_ids, since=killed_at)
    statuses = stack.statuses(job_ids)
    assert set(statuses.values()) == {"succeeded"}
    report(
        "worker SIGKILL mid-batch",
        jobs=len(job_ids),
        settled_after_s=round(settled, 1),
        runs=len(runs.read_text().splitlines()),
    )
    assert settled <= SETTLED_WITHIN


def test_redis_killed_and_restarted_empty(stack: Stack) -> None:
    worker = stack.start_worker()
    stack.start_server()
    submitter = Submitter(stack, rate=20)
    submitter.start()
    time.sleep(3)
    [child] = children(worker.pid)
    stack.redis.kill()
    time.sleep(5)
    stack.redis.start()  # empty: the stream, its messages and the consumer group are gone
    back_at = time.monotonic()
    time.sleep(3)
    submitter.stop()
    failed = [answer for answer in submitter.answers if answer[0] != 202]
    assert failed == []  # submits never waited on, nor failed for, the broker
    settled = stack.wait_settled(submitter.accepted, since=back_at)
    assert set(stack.statuses(submitter.accepted).values()) == {"succeeded"}
    assert children(worker.pid) == {child}  # the worker rode it out: never restarted
    report(
        "Redis killed, restarted empty",
        accepted=len(submitter.accepted),
        slowest_submit_ms=round(max(submitter.latencies) * 1000),
        settled_after_s=round(settled, 1),
    )
    assert settled <= SETTLED_WITHIN


def test_postgres_stopped_for_ten_seconds(stack: Stack) -> None:
    worker = stack.start_worker()
    stack.start_server()
    submitter = Submitter(stack, rate=20)
    submitter.start()
    time.sleep(3)
    [child] = children(worker.pid)
    stack.postgres.stop()
    time.sleep(10)
    stack.postgres.start()
    back_at = time.monotonic()
    time.sleep(5)
    submitter.stop()
    statuses = {status for status, _, _ in submitter.answers}
    unavailable = [(body, retry_after) for status, body, retry_after in submitter.answers if status == 503]
    assert statuses <= {202, 503}, statuses  # never a 500
    assert unavailable, "the outage was not seen"
    assert {json.loads(body)["detail"] for body, _ in unavailable} == {
        "The service is briefly unavailable; retry shortly."
    }
    assert {retry_after for _, retry_after in unavailable} == {"5"}
    assert submitter.answers[-1][0] == 202  # the web process recovered alone
    settled = stack.wait_settled(submitter.accepted, since=back_at)
    assert set(stack.statuses(submitter.accepted).values()) == {"succeeded"}
    assert children(worker.pid) == {child}
    report(
        "PostgreSQL stopped 10 s",
        accepted=len(submitter.accepted),
        answered_503=len(unavailable),
        settled_after_s=round(settled, 1),
    )
    assert settled <= SETTLED_WITHIN
