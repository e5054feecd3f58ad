"""ModalKit's "multiple queue backends" example, configured instead of coded.

ModalKit's docs route by hand inside a custom backend::

    if queue_name.startswith("ml_"):
        return await self.taskiq_backend.send_message(queue_name, message)
    else:
        return await self.sqs_backend.send_message(queue_name, message)

Here the same is settings: a ``QUEUE_ROUTES`` pattern sends ``ml_*`` to the TaskIQ
alias, and everything else goes to ``queue_config.backend`` from ``modalkit.yaml``
(set to the SQS alias through ModalKit's environment override).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import redis

import modalkit_django
from modalkit_django import broker
from modalkit_django.models import QueueDelivery

from . import flow
from .conftest import wait_until

if TYPE_CHECKING:
    from .queue_peers import SQSPeer


DEFAULT_BACKEND_ENV = "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__BACKEND"


@pytest.fixture
def reply_to(redis_client: redis.Redis) -> Iterator[str]:
    key = f"modalkit-test-replies-{uuid.uuid4().hex[:8]}"
    yield key
    redis_client.delete(key)


@pytest.fixture
def routed(use_queues: Any, sqs: SQSPeer, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``ml_*`` → the TaskIQ consumers, anything else → SQS; returns the ``MODALKIT`` setting."""
    monkeypatch.setenv(DEFAULT_BACKEND_ENV, "sqs")
    return use_queues(
        {
            "taskiq": {"BACKEND": "modalkit_django.queues.taskiq.TaskiqBackend"},
            "sqs": {"BACKEND": "modalkit_django.queues.sqs.SQSBackend", "OPTIONS": sqs.options},
        },
        routes=[("ml_*", "taskiq")],
        TASK_MODULES=["tests.consumers"],
    )


@pytest.mark.django_db
def test_ml_queues_go_to_taskiq_and_the_rest_to_sqs(
    run_async: Any, routed: dict[str, Any], sqs: SQSPeer, redis_client: redis.Redis, reply_to: str
) -> None:
    sqs_queue = sqs.queue_name("sentiment_results")
    sqs.create_queue(sqs_queue)
    meta = {"reply_to": reply_to}
    to_taskiq = modalkit_django.submit_job(message={"text": "good"}, success_queue="ml_results", meta=meta)
    to_sqs = modalkit_django.submit_job(message={"text": "good"}, success_queue=sqs_queue, meta=meta)

    async def run() -> None:
        await flow.process_batch([str(to_taskiq.id), str(to_sqs.id)])
        await broker.get_broker().wait_all()  # type: ignore[attr-defined]

    run_async(run)

    backends = dict(QueueDelivery.objects.values_list("job_id", "backend"))
    assert backends == {to_taskiq.id: "taskiq", to_sqs.id: "sqs"}
    assert set(QueueDelivery.objects.values_list("status", flat=True)) == {"sent"}
    [report] = [json.loads(raw) for raw in redis_client.lrange(reply_to, 0, -1)]
    assert report["message"]["job_id"] == str(to_taskiq.id)
    [received] = sqs.receive_all(sqs_queue)
    assert json.loads(received["Body"])["job_id"] == str(to_sqs.id)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_worker_routes_by_its_settings_to_both_real_peers(
    start_worker: Any,
    routed: dict[str, Any],
    worker_env: Any,
    sqs: SQSPeer,
    redis_client: redis.Redis,
    reply_to: str,
) -> None:
    sqs_queue = sqs.queue_name("sentiment_results")
    sqs.create_queue(sqs_queue)
    # The worker inherits the environment: modalkit.yaml's override and the AWS credentials.
    start_worker(**worker_env(routed))
    meta = {"reply_to": reply_to}
    to_taskiq = modalkit_django.submit_job(message={"text": "good"}, success_queue="ml_results", meta=meta)
    to_sqs = modalkit_django.submit_job(message={"text": "good"}, success_queue=sqs_queue, meta=meta)

    wait_until(
        lambda: QueueDelivery.objects.filter(status="sent").count() == 2, timeout=30, what="both deliveries sent"
    )
    assert dict(QueueDelivery.objects.values_list("job_id", "backend")) == {to_taskiq.id: "taskiq", to_sqs.id: "sqs"}
    wait_until(lambda: redis_client.llen(reply_to), what="the consumer's report")
    [report] = [json.loads(raw) for raw in redis_client.lrange(reply_to, 0, -1)]
    assert (report["message"]["job_id"], report["pid"] != os.getpid()) == (str(to_taskiq.id), True)
    [received] = sqs.receive_all(sqs_queue)
    assert json.loads(received["Body"])["job_id"] == str(to_sqs.id)
