"""The broker: building it from settings, and the Redis stream broker's batched acks."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis
from django.conf import settings
from taskiq import InMemoryBroker

from modalkit_django import broker
from modalkit_django.conf import BrokerSettings
from modalkit_django.exceptions import ModalkitImproperlyConfigured


def test_no_url_is_the_in_process_broker() -> None:
    assert isinstance(broker.build_broker(BrokerSettings()), InMemoryBroker)


def test_a_redis_url_is_the_acknowledging_stream_broker() -> None:
    built = broker.build_broker(BrokerSettings(url="redis://127.0.0.1:6379/0", queue_name="q"))
    assert isinstance(built, broker.RedisStreamBroker)
    assert built.queue_name == "q"


def test_other_urls_are_refused() -> None:
    with pytest.raises(ModalkitImproperlyConfigured, match="must be a redis:// URL"):
        broker.build_broker(BrokerSettings(url="amqp://localhost"))


def test_stream_acks_are_batched_and_all_land(redis_client: redis.Redis) -> None:
    queue = f"modalkit-test-acks-{uuid.uuid4().hex[:8]}"
    stream = broker.RedisStreamBroker(settings.REDIS_URL, queue_name=queue, xread_block=100)

    async def receive_and_ack() -> int:
        await stream.startup()
        for n in range(25):
            redis_client.xadd(queue, {b"data": str(n).encode()})
        received: list[Any] = []
        async for message in stream.listen():
            received.append(message)
            if len(received) == 25:
                break
        pending = redis_client.xpending(queue, "taskiq")["pending"]
        # Acknowledge all at once, as a finished batch of jobs does.
        await asyncio.gather(*(message.ack() for message in received))
        await stream.shutdown()
        return int(pending)

    try:
        assert asyncio.run(receive_and_ack()) == 25
        assert redis_client.xpending(queue, "taskiq")["pending"] == 0
    finally:
        redis_client.delete(queue)
