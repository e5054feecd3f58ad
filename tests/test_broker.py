"""The broker: building it from settings, sending from sync code, surviving a fork."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis
from taskiq import InMemoryBroker

from modalkit_django import broker
from modalkit_django.broker.redis_stream import RedisStreamBroker
from modalkit_django.conf import BrokerSettings, get_settings
from modalkit_django.exceptions import ModalkitImproperlyConfigured
from modalkit_django.worker import tasks

from .conftest import ROOT


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
    with pytest.raises(ModalkitImproperlyConfigured, match="must be a redis:// URL"):
        broker.build_broker(BrokerSettings(url="amqp://localhost"))


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
