"""ModalKit-style queue backends (``async send_message(queue_name, message) -> bool``), plugged in unchanged."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from django.conf import settings

from modalkit_django.exceptions import ModalkitImproperlyConfigured, PermanentDeliveryError
from modalkit_django.queues.modalkit import ModalKitAdapter

# --- ModalKit-style backends, written as ModalKit's docs show them --------------------------


class RedisListQueue:
    """The seed's "custom queue implementation", sending to a Redis list named by the queue."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    async def send_message(self, queue_name: str, message: str) -> bool:
        async with redis.asyncio.Redis.from_url(settings.REDIS_URL, socket_timeout=5) as client:
            await client.rpush(self.prefix + queue_name, message)
        return True


PREFIX = f"modalkit-test-{uuid.uuid4().hex[:8]}:"
shared_queue = RedisListQueue(PREFIX)  # an object, rather than a class


def make_queue(prefix: str) -> RedisListQueue:
    """A factory, as a project might keep its connection settings in one place."""
    return RedisListQueue(prefix)


class RefusingQueue:
    async def send_message(self, queue_name: str, message: str) -> bool:
        return False


class BrokenQueue:
    async def send_message(self, queue_name: str, message: str) -> bool:
        raise OSError("the queue is on fire")


class SlowQueue:
    async def send_message(self, queue_name: str, message: str) -> bool:
        await asyncio.sleep(30)
        return True


class PermanentlyRefusingQueue:
    async def send_message(self, queue_name: str, message: str) -> bool:
        raise PermanentDeliveryError("this queue will never take it")


class SyncQueue:
    def send_message(self, queue_name: str, message: str) -> bool:
        return True


def adapter(**options: Any) -> dict[str, Any]:
    return {"BACKEND": "modalkit_django.queues.modalkit.ModalKitAdapter", "OPTIONS": options}


@pytest.fixture
def redis_keys(redis_client: redis.Redis) -> Iterator[None]:
    yield
    keys = list(redis_client.scan_iter(PREFIX + "*"))
    if keys:
        redis_client.delete(*keys)


# --- Tests --------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "options",
    [
        {"queue_backend": f"{__name__}.RedisListQueue", "kwargs": {"prefix": PREFIX}},
        {"queue_backend": f"{__name__}.shared_queue"},
        {"queue_backend": f"{__name__}.make_queue", "kwargs": {"prefix": PREFIX}},
    ],
    ids=["class", "object", "factory"],
)
def test_a_modalkit_backend_sends_the_json_body(
    run_job: Any, use_queues: Any, redis_client: redis.Redis, redis_keys: None, options: dict[str, Any]
) -> None:
    use_queues({"custom": adapter(**options)}, routes=[("*", "custom")])
    delivery = run_job(success_queue="sentiment_results").deliveries.get()

    assert (delivery.backend, delivery.status, delivery.external_id) == ("custom", "sent", delivery.message_id)
    [raw] = redis_client.lrange(PREFIX + "sentiment_results", 0, -1)
    assert json.loads(raw) == delivery.payload


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("queue_backend", "status", "error"),
    [
        ("RefusingQueue", "retrying", "DeliveryError: RefusingQueue.send_message returned False"),
        ("BrokenQueue", "retrying", "DeliveryError: BrokenQueue.send_message raised OSError: the queue is on fire"),
        ("SlowQueue", "retrying", "DeliveryError: SlowQueue.send_message took longer than 0.1s"),
        ("PermanentlyRefusingQueue", "dead", "PermanentDeliveryError: this queue will never take it"),
    ],
)
def test_false_an_exception_or_a_timeout_is_a_failed_attempt(
    run_job: Any, use_queues: Any, queue_backend: str, status: str, error: str
) -> None:
    use_queues({"custom": adapter(queue_backend=f"{__name__}.{queue_backend}", timeout=0.1)}, routes=[("*", "custom")])
    delivery = run_job(success_queue="sentiment_results").deliveries.get()
    assert (delivery.status, delivery.last_error) == (status, error)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"queue_backend": "tests.nowhere.Queue"}, "cannot import tests.nowhere.Queue"),
        ({"queue_backend": f"{__name__}.SyncQueue"}, "must provide `async def send_message"),
        ({"queue_backend": f"{__name__}.PREFIX"}, "has no send_message"),
        ({"queue_backend": f"{__name__}.shared_queue", "kwargs": {"prefix": "x"}}, "is an object, not a class"),
    ],
    ids=["unimportable", "sync", "not-a-queue", "kwargs-for-an-object"],
)
def test_a_misconfigured_adapter_says_what_is_wrong(options: dict[str, Any], error: str) -> None:
    with pytest.raises(ModalkitImproperlyConfigured, match=f"'custom'.*{error}"):
        ModalKitAdapter("custom", **options)
