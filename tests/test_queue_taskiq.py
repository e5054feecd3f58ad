"""The TaskIQ backend: messages reach consumers registered with ``@consumer``, in a real worker too."""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.management import call_command

import modalkit_django
from modalkit_django import broker
from modalkit_django.exceptions import ModalkitImproperlyConfigured
from modalkit_django.models import Job, QueueDelivery
from modalkit_django.queues.taskiq import consumer, consumers

from . import consumers as test_consumers  # registered here as MODALKIT["TASK_MODULES"] would
from . import flow
from .conftest import wait_until

TASKIQ = {"taskiq": {"BACKEND": "modalkit_django.queues.taskiq.TaskiqBackend"}}


@pytest.fixture
def reply_to(redis_client: redis.Redis) -> Iterator[str]:
    """A Redis list the test consumers report to (named in the job's meta)."""
    key = f"modalkit-test-replies-{uuid.uuid4().hex[:8]}"
    yield key
    redis_client.delete(key)


def reports(redis_client: redis.Redis, key: str, count: int) -> list[dict[str, Any]]:
    wait_until(lambda: redis_client.llen(key) >= count, what=f"{count} consumer report(s) on {key}")
    return [json.loads(raw) for raw in redis_client.lrange(key, 0, -1)]


def run_and_drain(run_async: Callable[..., Any], jobs: list[Job]) -> None:
    """Run the jobs, then wait for the in-process broker to finish the consumers it started."""

    async def run() -> None:
        await flow.process_batch([str(job.id) for job in jobs])
        await broker.get_broker().wait_all()  # type: ignore[attr-defined]

    run_async(run)


@pytest.mark.django_db
def test_the_consumer_receives_the_payload_and_the_message_id(
    run_async: Any, use_queues: Any, redis_client: redis.Redis, reply_to: str
) -> None:
    use_queues(TASKIQ, routes=[("ml_*", "taskiq")])
    job = modalkit_django.submit_job(message={"text": "good"}, success_queue="ml_results", meta={"reply_to": reply_to})
    run_and_drain(run_async, [job])

    delivery = job.deliveries.get()
    assert (delivery.backend, delivery.status, delivery.external_id) == ("taskiq", "sent", delivery.message_id)
    [report] = reports(redis_client, reply_to, 1)
    assert report["message"] == delivery.payload
    assert report["task_id"] == delivery.message_id
    assert report["labels"] == {
        "modalkit_message_id": delivery.message_id,
        "modalkit_job_id": str(job.id),
        "modalkit_route": "success",
    }


@pytest.mark.django_db
def test_each_message_carries_only_its_own_labels(
    run_async: Any, use_queues: Any, redis_client: redis.Redis, reply_to: str
) -> None:
    use_queues(TASKIQ, routes=[("ml_*", "taskiq")])
    meta = {"reply_to": reply_to}
    good = modalkit_django.submit_job(message={"text": "good"}, success_queue="ml_results", meta=meta)
    bad = modalkit_django.submit_job(message={"text": "explode"}, failure_queue="ml_errors", meta=meta)
    run_and_drain(run_async, [good, bad])

    by_job = {report["message"]["job_id"]: report for report in reports(redis_client, reply_to, 2)}
    assert by_job[str(good.id)]["labels"]["modalkit_route"] == "success"
    assert by_job[str(bad.id)]["labels"]["modalkit_route"] == "failure"
    assert by_job[str(bad.id)]["message"]["original_message"]["message"] == {"text": "explode"}
    # TaskIQ's kicker shares the task's labels dict: the task's own must stay clean.
    assert test_consumers.record_ml_results.labels == {}


@pytest.mark.django_db
def test_a_queue_name_without_a_consumer_is_dead_naming_the_consumers(run_job: Any, use_queues: Any) -> None:
    use_queues(TASKIQ, routes=[("*", "taskiq")])
    delivery = run_job(success_queue="ml_unknown").deliveries.get()
    assert delivery.status == "dead"
    assert "No TaskIQ consumer for queue 'ml_unknown' (registered: ml_errors, ml_results)" in delivery.last_error


@pytest.mark.django_db
def test_a_broker_that_cannot_take_the_message_is_retried(run_job: Any, use_queues: Any, unused_port: int) -> None:
    use_queues(
        TASKIQ,
        routes=[("*", "taskiq")],
        BROKER={"URL": f"redis://127.0.0.1:{unused_port}/0", "OPTIONS": {"socket_connect_timeout": 1}},
    )
    delivery = run_job(success_queue="ml_results").deliveries.get()
    assert delivery.status == "retrying"
    assert "TaskIQ could not send to modalkit.consumer:ml_results" in delivery.last_error


def test_a_queue_has_one_consumer() -> None:
    async def another(message: dict[str, Any]) -> None: ...

    with pytest.raises(ModalkitImproperlyConfigured, match="'ml_results' already has a TaskIQ consumer"):
        consumer("ml_results")(another)
    # The same function again (its module reloaded) is not a conflict.
    consumer("ml_results")(test_consumers.record_ml_results.original_func)
    assert consumers()["ml_results"].original_func is test_consumers.record_ml_results.original_func


# --- MODALKIT["TASK_MODULES"] ---------------------------------------------------------------


def test_the_embedded_broker_imports_task_modules_when_it_starts(use_queues: Any) -> None:
    use_queues({}, TASK_MODULES=["tests.no_such_consumers"])
    with pytest.raises(ModalkitImproperlyConfigured, match=r"'tests\.no_such_consumers'"):
        broker.start()


@pytest.mark.django_db  # the command checks the database's migrations before it starts workers
def test_the_worker_command_adds_task_modules(use_queues: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Any] = []
    monkeypatch.setattr("taskiq.cli.worker.run.run_worker", lambda args: started.append(args) or 0)
    # A Redis broker: with the in-process one, the command refuses to start a worker.
    use_queues({}, TASK_MODULES=["tests.consumers"], BROKER={"URL": settings.REDIS_URL, "QUEUE_NAME": "modalkit-test"})
    call_command("taskiq", "worker", "--workers", "1", stdout=io.StringIO())
    [args] = started
    assert args.modules == ["modalkit_django.worker.tasks", "tests.consumers"]
    assert args.workers == 1


# --- In a real worker ----------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_worker_runs_the_consumer_its_settings_name(
    start_worker: Any, use_queues: Any, worker_env: Any, redis_client: redis.Redis, reply_to: str
) -> None:
    modalkit = use_queues(TASKIQ, routes=[("ml_*", "taskiq")], TASK_MODULES=["tests.consumers"])
    start_worker(**worker_env(modalkit))
    job = modalkit_django.submit_job(message={"text": "good"}, success_queue="ml_results", meta={"reply_to": reply_to})
    quiet = modalkit_django.submit_job(message={"text": "good"}, success_queue="")

    [report] = reports(redis_client, reply_to, 1)
    assert report["pid"] != os.getpid()  # the worker process ran it
    assert report["message"]["job_id"] == str(job.id)
    assert report["task_id"] == f"{job.id}:success"
    wait_until(
        lambda: QueueDelivery.objects.filter(job=job, backend="taskiq", status="sent").exists(),
        what="the delivery to be recorded as sent",
    )
    # A job without a queue name finishes all the same, with nothing to deliver.
    wait_until(lambda: Job.objects.get(id=quiet.id).status == "succeeded", what="the job without a queue")
    assert not QueueDelivery.objects.filter(job=quiet).exists()
