from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connection
from django.test import Client, override_settings

import modalkit_django
from modalkit_django import broker
from modalkit_django.api import intake, threads
from modalkit_django.jobs import wakeups
from modalkit_django.queues import queues
from modalkit_django.queues.memory import MemoryBackend
from modalkit_django.worker import database

from .brokers import BROKERS, peer
from .private_services import PrivatePgBouncer

ROOT = Path(__file__).resolve().parent.parent

# Loopback peers: a fake Modal control plane, an SQS server, a webhook receiver.
pytest_plugins = ["tests.modal_fake.fixtures", "tests.queue_peers", "tests.stack"]


def wait_until(predicate: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def _worker_statements_on_the_test_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """Inside a test's transaction, a worker's lease renewals and sweeps run on the thread
    that holds it (elsewhere they have connections of their own, which could not see it)."""
    marker = request.node.get_closest_marker("django_db")
    in_one_transaction = marker is not None and not marker.kwargs.get("transaction", False)
    database.DatabaseThread.on_sync_thread = in_one_transaction
    yield
    database.DatabaseThread.on_sync_thread = False


@pytest.fixture(scope="session", autouse=True)
def _no_broker_start_on_requests() -> None:
    """The test process is no server: a live server's first request (the browser tests')
    would start the embedded worker, which would run the queued jobs tests seed. Tests
    that want it start it (broker.start(), or a submit's wake-up); tests/test_urls.py
    tests the start on the first request."""
    from django.core.signals import request_started

    from modalkit_django import apps

    request_started.disconnect(dispatch_uid=apps._START_BROKER)


@pytest.fixture(scope="session", autouse=True)
def _stop_in_process_broker(django_db_setup: Any) -> Iterator[None]:
    """Stop the embedded worker before the test database is dropped: it holds a connection."""
    yield
    broker.reset()
    intake.close_connections()
    threads.close_connections()


class RecordingWaker:
    """Records the wake-ups services send, and whether each job was committed by then."""

    def __init__(self) -> None:
        self.jobs: list[list[Any]] = []
        self.deliveries: list[list[Any]] = []
        self.committed: list[bool] = []

    def wake_jobs(self, job_ids: Any) -> None:
        from modalkit_django.models import Job

        self.jobs.append(list(job_ids))
        # Read on another connection: only committed rows are there.
        with ThreadPoolExecutor(1) as other:
            self.committed.append(other.submit(_count_committed, Job, list(job_ids)).result() == len(job_ids))

    async def awake_jobs(self, job_ids: Any) -> None:
        self.jobs.append(list(job_ids))

    def wake_deliveries(self, delivery_ids: Any) -> None:
        self.deliveries.append(list(delivery_ids))

    async def awake_deliveries(self, delivery_ids: Any) -> None:
        self.deliveries.append(list(delivery_ids))


def _count_committed(model: Any, ids: list[Any]) -> int:
    try:
        return int(model.objects.filter(id__in=ids).count())
    finally:
        connection.close()


@pytest.fixture
def recording_waker() -> Iterator[RecordingWaker]:
    waker = RecordingWaker()
    previous = wakeups.set_waker(waker)
    yield waker
    wakeups.set_waker(previous)


@pytest.fixture
def user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice", password="pw")


@pytest.fixture
def other_user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("bob", password="pw")


@pytest.fixture
def api_key(user: Any) -> str:
    """A key granted every queue (tests/test_admission.py has keys granted less)."""
    _, raw_key = modalkit_django.create_api_key(owner=user, name="test", allowed_queues=["*"])
    return raw_key


@pytest.fixture
def api(api_key: str) -> Client:
    """A test client that sends the user's key, as an API caller would."""
    return Client(headers={"Authorization": f"Bearer {api_key}"})


@pytest.fixture
def memory_queue() -> Iterator[MemoryBackend]:
    backend = queues["memory"]
    assert isinstance(backend, MemoryBackend)
    backend.clear()
    yield backend
    backend.clear()


@pytest.fixture
def run_async() -> Callable[..., Any]:
    """Run a coroutine function from a test. Its ``sync_to_async`` database calls run
    on this thread, inside the test's transaction."""

    def run(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return async_to_sync(function)(*args, **kwargs)

    return run


# --- Real processes ------------------------------------------------------------------


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.ping()
    yield client
    client.close()


@pytest.fixture
def redis_broker(redis_client: redis.Redis) -> Iterator[dict[str, str]]:
    """Switch this process to the Redis stream broker, on a stream of the test's own."""
    queue = f"modalkit-test-{uuid.uuid4().hex[:8]}"
    modalkit = {**settings.MODALKIT, "BROKER": {"URL": settings.REDIS_URL, "QUEUE_NAME": queue}}
    with override_settings(MODALKIT=modalkit):
        yield {"url": settings.REDIS_URL, "queue": queue}
    redis_client.delete(queue)


@pytest.fixture(params=BROKERS)
def any_broker(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Switch this process to each broker in turn (its shared server), on a queue of the test's own."""
    kind = request.param
    server = peer(kind)
    queue = f"modalkit-test-{uuid.uuid4().hex[:8]}"
    modalkit = {**settings.MODALKIT, "BROKER": {"URL": server.url, "QUEUE_NAME": queue}}
    with override_settings(MODALKIT=modalkit):
        yield {"kind": kind, "url": server.url, "queue": queue}
    server.forget(queue)


class WorkerProcess:
    """``manage.py taskiq worker`` in a subprocess, on the test database and stream."""

    def __init__(
        self,
        broker: dict[str, str],
        extra_env: dict[str, str] | None = None,
        worker_settings: dict[str, Any] | None = None,
    ) -> None:
        self.broker = broker
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "MODALKIT_TEST_DATABASE_NAME": connection.settings_dict["NAME"],
            "MODALKIT_TEST_BROKER_URL": broker["url"],
            "MODALKIT_TEST_BROKER_QUEUE": broker["queue"],
            "MODALKIT_TEST_WORKER": json.dumps(worker_settings or {}),
            **(extra_env or {}),
        }
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"{broker['queue']}-worker.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "taskiq", "worker", "--workers", "1", "--log-level", "WARNING"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check_alive(self) -> None:
        # Messages wait in the stream until the worker reads them (the consumer group
        # exists before anything is sent), so there is no need to wait for it here.
        time.sleep(0.2)
        if self.process.poll() is not None:
            pytest.fail(f"worker exited with {self.process.returncode}:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the whole process group (the TaskIQ manager and its worker child)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=15)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def starting_workers(broker: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    """Yields ``start``, which starts a worker on ``broker``; stops them all afterwards."""
    workers: list[WorkerProcess] = []

    def start(worker_settings: dict[str, Any] | None = None, **extra_env: str) -> WorkerProcess:
        """A worker on the shipped timers, or on ``worker_settings`` (``MODALKIT["WORKER"]`` keys)."""
        worker = WorkerProcess(broker, extra_env, worker_settings)
        workers.append(worker)
        worker.check_alive()
        return worker

    yield start
    for worker in workers:
        worker.stop()
    if os.environ.get("MODALKIT_TEST_PGBOUNCER") == "1":  # make pgbouncer: the server's log is not ours to read
        lost = [
            line
            for worker in workers
            for line in worker.log_path.read_text().splitlines()
            if PrivatePgBouncer.LOST_SESSION_STATE.search(line)
        ]
        assert lost == [], "session state lost through PgBouncer"


@pytest.fixture
def start_worker(redis_broker: dict[str, str], redis_client: redis.Redis) -> Iterator[Callable[..., WorkerProcess]]:
    yield from starting_workers(redis_broker)


@pytest.fixture
def start_any_worker(any_broker: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    """Workers on ``any_broker``: each broker in turn."""
    yield from starting_workers(any_broker)
