"""The broker: building it from settings, sending from sync code, surviving a fork."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import pytest
import redis
from django.conf import settings
from django.test import override_settings
from nats.js.api import RetentionPolicy
from taskiq import AsyncBroker, BrokerMessage, InMemoryBroker, TaskiqEvents

from modalkit_django import broker
from modalkit_django.broker.jetstream import NatsJetStreamBroker
from modalkit_django.broker.rabbitmq import RabbitMQBroker
from modalkit_django.broker.redis_stream import RedisStreamBroker
from modalkit_django.conf import BrokerSettings, get_settings
from modalkit_django.exceptions import ModalkitImproperlyConfigured
from modalkit_django.worker import tasks

from .brokers import peer
from .conftest import ROOT
from .private_services import free_port


def test_no_url_is_the_in_process_broker() -> None:
    assert isinstance(broker.build_broker(BrokerSettings()), InMemoryBroker)


def test_a_redis_url_is_the_acknowledging_stream_broker() -> None:
    built = broker.build_broker(BrokerSettings(url="redis://127.0.0.1:6379/0", queue_name="q"))
    assert isinstance(built, RedisStreamBroker)
    assert built.queue_name == "q"
    # A worker merges the run_job wake-ups it reads together, and holds as many as --max-async-tasks.
    assert built.merge == {tasks.run_job.task_name: tasks.run_jobs.task_name}
    assert built.max_in_hand == get_settings().worker.wake_ups_in_hand == 400


def test_broker_options_override_the_stream_defaults() -> None:
    options = {"merge": {}, "max_in_hand": None, "xread_block": 100}
    built = broker.build_broker(BrokerSettings(url="redis://127.0.0.1:6379/0", queue_name="q", options=options))
    assert isinstance(built, RedisStreamBroker)
    assert (built.merge, built.max_in_hand, built.block) == ({}, None, 100)


def test_other_urls_are_refused() -> None:
    with pytest.raises(
        ModalkitImproperlyConfigured, match=r"must be a redis://, rediss://.* amqp://, amqps://, nats://"
    ):
        broker.build_broker(BrokerSettings(url="kafka://localhost"))


def test_an_amqp_url_is_rabbitmq_on_a_queue_and_exchange_of_the_deployments_own() -> None:
    built = broker.build_broker(BrokerSettings(url=settings.RABBITMQ_URL, queue_name="app:jobs"))
    assert isinstance(built, RabbitMQBroker)
    assert [(queue.name, queue.type.value) for queue in built._task_queues] == [("app:jobs", "classic")]
    assert (built._exchange.name, built._exchange.type.value) == ("app:jobs", "direct")
    assert built._dead_letter_queue.name == "app:jobs.dead_letter"
    assert built._qos == get_settings().worker.wake_ups_in_hand  # as many as --max-async-tasks


def test_a_nats_url_is_a_durable_pull_consumer_on_a_work_queue_stream() -> None:
    spec = BrokerSettings(url="nats://a:4222, nats://b:4222", queue_name="app.jobs", options={"batch": 50})
    built = broker.build_broker(spec)
    assert isinstance(built, NatsJetStreamBroker)
    assert built.servers == ["nats://a:4222", "nats://b:4222"]
    assert (built.stream_config.name, built.stream_config.subjects, built.durable) == (
        "app_jobs",
        ["app_jobs"],
        "app_jobs-workers",
    )
    assert built.stream_config.retention is RetentionPolicy.WORK_QUEUE
    assert built.pull_consume_batch == 50


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [("amqp://localhost", "taskiq_aio_pika", "rabbitmq"), ("nats://localhost", "taskiq_nats", "nats")],
)
def test_a_broker_whose_extra_is_missing_names_the_extra(
    url: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it fails
    for name in ("modalkit_django.broker.rabbitmq", "modalkit_django.broker.jetstream"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ModalkitImproperlyConfigured, match=rf'pip install "modalkit-django\[{extra}\]"'):
        broker.build_broker(BrokerSettings(url=url))


@pytest.mark.parametrize(
    ("url", "line"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0 (stream app:jobs)"),
        ("amqp://ops:pw@127.0.0.1:5672/", "amqp://ops:***@127.0.0.1:5672/ (queue app:jobs)"),
        ("nats://ops:pw@127.0.0.1:4222", "nats://ops:***@127.0.0.1:4222 (stream app_jobs)"),
    ],
)
def test_a_worker_names_its_broker_and_what_it_reads(url: str, line: str) -> None:
    modalkit = {**settings.MODALKIT, "BROKER": {"URL": url, "QUEUE_NAME": "app.jobs" if "nats" in url else "app:jobs"}}
    with override_settings(MODALKIT=modalkit):
        assert broker.describe_broker() == line


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_process_forked_after_start_sends_through_a_broker_of_its_own(
    redis_broker: dict[str, str], redis_client: redis.Redis
) -> None:
    from modalkit_django.worker import tasks

    broker.start()
    broker.kick(tasks.run_job, "from-the-parent")
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which exits here
        code = 1
        try:
            broker.kick(tasks.run_job, "from-the-child")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    bodies = [entry[b"data"] for _, entry in redis_client.xrange(redis_broker["queue"])]
    assert [b"from-the-child" in body for body in bodies] == [False, True]


def test_get_broker_sets_django_up_in_a_fresh_interpreter() -> None:
    """TaskIQ's spawn start method (macOS) imports the broker, then the tasks, in a new process."""
    code = "from modalkit_django.broker import get_broker; get_broker(); import modalkit_django.worker.tasks"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- A worker's broker, in this process, against the real servers ---------------------


def worker_side(spec: BrokerSettings) -> AsyncBroker:
    """The broker as a worker process has it, without the worker's own start-up hooks
    (the engine): only the transport is tested here."""
    built = broker.build_broker(spec)
    built.is_worker_process = True
    built.event_handlers[TaskiqEvents.WORKER_STARTUP].clear()
    built.event_handlers[TaskiqEvents.WORKER_SHUTDOWN].clear()
    return built


async def _received_after_losing_the_queue(built: AsyncBroker, lose: Callable[[], None]) -> list[bytes]:
    """Read one wake-up, lose the queue under the reader, send until one arrives again."""
    received: list[bytes] = []

    async def read() -> None:
        async for message in built.listen():
            received.append(message.data)
            if message.ack is not None:
                acked = message.ack()
                if inspect.isawaitable(acked):
                    await acked

    def wake_up(data: bytes) -> BrokerMessage:
        return BrokerMessage(task_id=uuid.uuid4().hex, task_name="t", message=data, labels={})

    await built.startup()
    reader = asyncio.create_task(read())
    try:
        for data in (b"before", b"after"):
            if data == b"after":
                await asyncio.to_thread(lose)
            deadline = time.monotonic() + 30
            while data not in received:
                assert time.monotonic() < deadline, f"{data!r} never arrived: {received}"
                await built.kick(wake_up(data))  # the sender makes the queue again where it can
                await asyncio.sleep(0.5)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await built.shutdown()
    return received


@pytest.mark.parametrize("kind", ["rabbitmq", "nats"])
def test_a_workers_broker_reads_on_after_its_queue_is_deleted(kind: str) -> None:
    queue = f"modalkit-inproc-{uuid.uuid4().hex[:6]}"
    built = worker_side(BrokerSettings(url=getattr(settings, f"{kind.upper()}_URL"), queue_name=queue))
    server = peer(kind)
    try:
        received = asyncio.run(_received_after_losing_the_queue(built, lambda: server.lose(queue)))
    finally:
        server.forget(queue)
    assert received[0] == b"before" and b"after" in received


@pytest.mark.parametrize("scheme", ["amqp://guest:guest@", "nats://"])
def test_a_workers_broker_started_while_its_server_is_away_says_so_once(
    scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{scheme}127.0.0.1:{free_port()}"
    built = worker_side(BrokerSettings(url=url, queue_name="modalkit-nobody"))

    async def start_and_stop() -> None:
        await built.startup()  # a worker starts anyway, and runs the jobs in the database
        await built.shutdown()

    asyncio.run(start_and_stop())
    away = [record for record in caplog.records if "does not answer" in record.getMessage()]
    assert len(away) == 1, caplog.text

    built = broker.build_broker(BrokerSettings(url=url, queue_name="modalkit-nobody"))
    with pytest.raises(Exception):  # noqa: B017, PT011 - a sender raises, each client its own error
        asyncio.run(built.startup())
