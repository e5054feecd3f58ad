"""The service as its users run it, as processes: the web server (`make serve`) and workers on a PostgreSQL and a
Redis of its own (or a NATS or a RabbitMQ as the broker: ``broker_stack``), which tests may stop, kill and start
again."""

from __future__ import annotations

import contextlib
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
from typing import Any, Protocol

import httpx
import psycopg
import pytest

from .conftest import ROOT
from .private_services import PrivateNats, PrivatePgBouncer, PrivatePostgres, PrivateRabbitMQ, PrivateRedis, free_port

# The target of the engine's design: after any single fault, every accepted job settled
# within 60 s of the fault ending.
SETTLED_WITHIN = 60.0
FINAL = ("succeeded", "failed", "expired", "canceled")


class BrokerServer(Protocol):
    url: str

    def start(self) -> None: ...
    def kill(self) -> None: ...
    def stop(self) -> None: ...


BROKER_QUEUE = "modalkit-faults"


class Stack:
    """The service as its users run it: a web server and workers, on private PostgreSQL and Redis,
    and a broker: that Redis, or a server of its own."""

    def __init__(
        self, postgres: PrivatePostgres, redis: PrivateRedis, tmp: Path, broker: BrokerServer | None = None
    ) -> None:
        self.postgres = postgres
        self.redis = redis
        self.broker: BrokerServer = broker or redis
        self.tmp = tmp
        database = f"faults_{uuid.uuid4().hex[:8]}"
        self.database_url = postgres.create_database(database)
        # Under `make pgbouncer` (tests/pgbouncer.py), every process of the stack connects
        # through a PgBouncer of its own in transaction mode; the tests' own reads do not.
        self.bouncer: PrivatePgBouncer | None = None
        if os.environ.get("MODALKIT_TEST_PGBOUNCER") == "1":
            self.bouncer = PrivatePgBouncer(postgres.port)
            self.bouncer.start()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "TEST_DATABASE_URL": self.bouncer.url(database) if self.bouncer else self.database_url,
            "MODALKIT_TEST_DATABASE_NAME": database,
            "MODALKIT_TEST_BROKER_URL": self.broker.url,
            "MODALKIT_TEST_BROKER_QUEUE": BROKER_QUEUE,
            "MODALKIT_TEST_WORKER": "{}",  # the shipped timers
        }
        self.broker_kind = "redis"
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
        """``manage.py ARGS``, or ``python -m ARGS`` when the first is ``-m``."""
        log = (self.tmp / f"{name}.log").open("ab")
        self.logs.append(log)
        process = subprocess.Popen(
            [sys.executable, *(args if args[0] == "-m" else ("manage.py", *args))],
            cwd=ROOT,
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def start_worker(self, *, processes: int = 1, **env: str) -> subprocess.Popen[bytes]:
        """``manage.py taskiq worker --workers PROCESSES``."""
        return self.spawn("worker", "taskiq", "worker", "--workers", str(processes), "--log-level", "WARNING", **env)

    def drive(self, *args: str, **env: str) -> None:
        """``python -m tests.scale_driver ARGS``: load made as a host project makes it."""
        result = subprocess.run(
            [sys.executable, "-m", "tests.scale_driver", *args],
            cwd=ROOT, env={**self.env, **env}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr

    def query(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        """The rows of a statement (none for one that returns none)."""
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            cursor = connection.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def end(self, process: subprocess.Popen[bytes]) -> None:
        """Stop one process as a deploy does (SIGTERM to its group), and wait for it."""
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)

    def start_server(self, processes: int = 1) -> None:
        """The production server (`make serve`): uvicorn processes with a socket each
        (modalkit_django.serve), the API on its lean path."""
        self.spawn(
            "server", "-m", "modalkit_django.serve", "project.asgi:application", "--host", "127.0.0.1",
            "--port", str(self.port), "--processes", str(processes), "--no-access-log",
        )  # fmt: skip
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
        if self.bouncer is not None:
            try:
                figures = {
                    row["database"]: {"transactions": int(row["total_xact_count"]),
                                      "waited_s": round(int(row["total_wait_time"]) / 1e6, 1)}
                    for row in self.bouncer.stats() if row["database"] != "pgbouncer"
                }  # fmt: skip
                print(f"\nPGBOUNCER {json.dumps(figures)}")
            finally:
                self.bouncer.stop()

    def session_state_errors(self) -> list[str]:
        """The errors in the PostgreSQL server's log that session state lost under
        transaction pooling causes (a prepared statement or cursor not found)."""
        log = (self.postgres.datadir / "log").read_text(errors="replace")
        return [line for line in log.splitlines() if PrivatePgBouncer.LOST_SESSION_STATE.search(line)]


def children(pid: int) -> set[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return {int(line) for line in result.stdout.split()}


@contextlib.contextmanager
def running_stack(tmp_path: Path, broker: BrokerServer | None = None) -> Iterator[Stack]:
    postgres, redis = PrivatePostgres(), PrivateRedis()
    postgres.start()
    redis.start()
    built = None
    try:
        if broker is not None:
            broker.start()
        built = Stack(postgres, redis, tmp_path, broker)
        yield built
        assert built.session_state_errors() == []
    finally:
        if built is not None:
            built.stop()
        if broker is not None:
            broker.stop()
        redis.stop()
        postgres.destroy()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path) as built:
        yield built


# The brokers a stack can run on: Redis (the stack's own), or a NATS or RabbitMQ server of its own.
PRIVATE_BROKERS: dict[str, type[PrivateNats] | type[PrivateRabbitMQ] | None] = {
    "redis": None,
    "nats": PrivateNats,
    "rabbitmq": PrivateRabbitMQ,
}


@pytest.fixture(params=list(PRIVATE_BROKERS))
def broker_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """A stack on each broker in turn."""
    server = PRIVATE_BROKERS[request.param]
    with running_stack(tmp_path, server() if server is not None else None) as built:
        built.broker_kind = request.param
        yield built


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
