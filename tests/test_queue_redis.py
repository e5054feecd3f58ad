"""The Redis backend against the real Redis, and the per-loop clients it keeps."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings

from modalkit_django.conf import get_settings
from modalkit_django.exceptions import DeliveryError, ModalkitImproperlyConfigured, PermanentDeliveryError
from modalkit_django.queues.base import QueueMessage
from modalkit_django.queues.clients import LoopLocal
from modalkit_django.queues.redis import RedisBackend

pytestmark = pytest.mark.django_db


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"modalkit-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    keys = list(redis_client.scan_iter(prefix + "*"))
    if keys:
        redis_client.delete(*keys)


def redis_queue(prefix: str, **options: Any) -> dict[str, Any]:
    return {
        "BACKEND": "modalkit_django.queues.redis.RedisBackend",
        "OPTIONS": {"url": settings.REDIS_URL, "key_prefix": prefix, **options},
    }


def message(queue_name: str, n: int = 0) -> QueueMessage:
    job_id = str(uuid.uuid4())
    return QueueMessage(f"{job_id}:success", queue_name, "success", job_id, {"n": n, "job_id": job_id})


def test_list_mode_pushes_the_json_body(run_job: Any, use_queues: Any, redis_client: redis.Redis, prefix: str) -> None:
    use_queues({"redis": redis_queue(prefix)}, routes=[("*", "redis")])
    delivery = run_job(success_queue="sentiment_results").deliveries.get()

    assert (delivery.backend, delivery.status, delivery.external_id) == ("redis", "sent", delivery.message_id)
    [raw] = redis_client.lrange(prefix + "sentiment_results", 0, -1)
    assert json.loads(raw) == delivery.payload


def test_stream_mode_adds_an_entry_with_the_message_fields(
    run_job: Any, use_queues: Any, redis_client: redis.Redis, prefix: str
) -> None:
    use_queues({"redis": redis_queue(prefix, mode="stream")}, routes=[("*", "redis")])
    job = run_job(success_queue="sentiment_results")
    delivery = job.deliveries.get()

    [(entry_id, fields)] = redis_client.xrange(prefix + "sentiment_results")
    assert (delivery.status, delivery.external_id) == ("sent", entry_id.decode())
    assert {name.decode(): value.decode() for name, value in fields.items()} == {
        "body": json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True),
        "message_id": delivery.message_id,
        "job_id": str(job.id),
        "route": "success",
    }


def test_messages_sent_together_each_get_their_own_result(
    run_async: Any, redis_client: redis.Redis, prefix: str
) -> None:
    redis_client.set(prefix + "taken", "a string, not a list")
    backend = RedisBackend("redis", url=settings.REDIS_URL, key_prefix=prefix)
    messages = [message("a", 1), message("taken", 2), message("a", 3), message("b", 4)]

    outcomes = run_async(backend.asend_many, messages)

    assert outcomes[0] == messages[0].message_id
    assert isinstance(outcomes[1], PermanentDeliveryError)
    assert "WRONGTYPE" in str(outcomes[1])
    assert outcomes[2:] == [messages[2].message_id, messages[3].message_id]
    assert [json.loads(raw)["n"] for raw in redis_client.lrange(prefix + "a", 0, -1)] == [1, 3]
    assert [json.loads(raw)["n"] for raw in redis_client.lrange(prefix + "b", 0, -1)] == [4]


def test_messages_to_one_list_go_in_one_rpush(run_async: Any, redis_client: redis.Redis, prefix: str) -> None:
    backend = RedisBackend("redis", url=settings.REDIS_URL, key_prefix=prefix)
    messages = [message("a", 1), message("b", 2), message("a", 3), message("a", 4)]
    seen: list[str] = []
    with redis_client.monitor() as monitor:
        # MONITOR shows every command the server runs; this test's keys are its own.
        listening = threading.Thread(target=lambda: seen.extend(_commands_on(monitor, prefix, until=prefix + "end")))
        listening.start()
        run_async(backend.asend_many, messages)
        redis_client.rpush(prefix + "end", "x")
        listening.join(timeout=10)

    assert [command.split()[:2] for command in seen] == [["RPUSH", prefix + "a"], ["RPUSH", prefix + "b"]]
    assert [json.loads(raw)["n"] for raw in redis_client.lrange(prefix + "a", 0, -1)] == [1, 3, 4]


def _commands_on(monitor: Any, prefix: str, *, until: str) -> Iterator[str]:
    for event in monitor.listen():
        command = event["command"]
        if until in command:
            return
        if prefix in command:
            yield command


def test_a_key_of_another_type_makes_the_delivery_dead(
    run_job: Any, use_queues: Any, redis_client: redis.Redis, prefix: str
) -> None:
    redis_client.set(prefix + "sentiment_results", "a string")
    use_queues({"redis": redis_queue(prefix)}, routes=[("*", "redis")])
    delivery = run_job(success_queue="sentiment_results").deliveries.get()
    assert delivery.status == "dead"
    assert "WRONGTYPE" in delivery.last_error


def test_streams_are_trimmed_to_about_their_max_length(run_async: Any, redis_client: redis.Redis, prefix: str) -> None:
    backend = RedisBackend("redis", url=settings.REDIS_URL, key_prefix=prefix, mode="stream", max_stream_length=10)
    run_async(backend.asend_many, [message("capped", n) for n in range(300)])
    # MAXLEN ~ trims whole stream nodes (100 entries by default): about, not exactly, 10.
    assert redis_client.xlen(prefix + "capped") < 200


def test_redis_down_is_retried(run_job: Any, use_queues: Any, unused_port: int) -> None:
    use_queues(
        {
            "redis": {
                "BACKEND": "modalkit_django.queues.redis.RedisBackend",
                "OPTIONS": {"url": f"redis://127.0.0.1:{unused_port}/0"},
            }
        },
        routes=[("*", "redis")],
    )
    delivery = run_job(success_queue="sentiment_results").deliveries.get()
    assert delivery.status == "retrying"
    assert delivery.last_error.startswith("DeliveryError: Redis: ConnectionError")


def test_send_returns_or_raises_what_send_many_reports(run_async: Any, prefix: str, unused_port: int) -> None:
    one = message("q")
    assert run_async(RedisBackend("redis", url=settings.REDIS_URL, key_prefix=prefix).asend, one) == one.message_id
    down = RedisBackend("redis", url=f"redis://127.0.0.1:{unused_port}/0", socket_connect_timeout=1)
    with pytest.raises(DeliveryError, match="ConnectionError"):
        run_async(down.asend, one)


def test_an_unknown_mode_is_a_configuration_error() -> None:
    with pytest.raises(ModalkitImproperlyConfigured, match="mode must be one of"):
        RedisBackend("redis", url=settings.REDIS_URL, mode="pubsub")  # type: ignore[arg-type]


# --- One client per event loop ---------------------------------------------------------


class FakeClient:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


def test_each_loop_has_its_own_client_closed_when_the_loop_ends(run_async: Any) -> None:
    clients = LoopLocal(FakeClient, FakeClient.close)

    async def twice() -> tuple[FakeClient, FakeClient]:
        return await clients.get(), await clients.get()

    first, again = run_async(twice)
    assert first is again
    assert first.closed  # asyncio.run finalised the holder before closing the loop
    [second, _] = run_async(twice)
    assert second is not first


def test_aclose_closes_the_running_loops_client_at_once(run_async: Any) -> None:
    clients = LoopLocal(FakeClient, FakeClient.close)

    async def use_then_close() -> tuple[FakeClient, bool, FakeClient]:
        client = await clients.get()
        await clients.aclose()
        closed_before_the_loop_ended = client.closed
        return client, closed_before_the_loop_ended, await clients.get()

    client, closed, replacement = run_async(use_then_close)
    assert closed
    assert replacement is not client


def test_concurrent_first_uses_share_one_client(run_async: Any) -> None:
    clients = LoopLocal(FakeClient, FakeClient.close)

    async def together() -> list[FakeClient]:
        return list(await asyncio.gather(*(clients.get() for _ in range(5))))

    assert len({id(client) for client in run_async(together)}) == 1


def test_close_from_another_thread_closes_each_loops_client_on_its_loop() -> None:
    import threading

    from modalkit_django.queues.clients import LoopLocal

    closed: list[str] = []

    async def close(client: str) -> None:
        closed.append(client)

    clients = LoopLocal(lambda: "client", close)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        assert asyncio.run_coroutine_threadsafe(clients.get(), loop).result(5) == "client"
        clients.close()  # from this thread: scheduled on the client's own loop
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result(5)
        assert closed == ["client"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_the_default_key_is_in_a_namespace_of_its_own(run_async: Any, redis_client: redis.Redis) -> None:
    queue = f"results-{uuid.uuid4().hex[:8]}"
    one = message(queue)
    assert run_async(RedisBackend("redis", url=settings.REDIS_URL).asend, one) == one.message_id
    try:
        assert json.loads(redis_client.lpop(f"modalkit:results:{queue}")) == one.payload
    finally:
        redis_client.delete(f"modalkit:results:{queue}")


def test_a_queue_whose_key_is_the_brokers_is_refused(run_async: Any, redis_client: redis.Redis) -> None:
    stream = get_settings().broker.stream_name()
    backend = RedisBackend("redis", url=settings.REDIS_URL, key_prefix="")
    fine_queue = f"fine-{uuid.uuid4().hex[:8]}"
    fine, broker_stream, epoch = message(fine_queue), message(stream), message(f"{stream}:modalkit-epoch")
    before = redis_client.exists(stream, f"{stream}:modalkit-epoch")

    outcomes = run_async(backend.asend_many, [fine, broker_stream, epoch])

    try:
        assert outcomes[0] == fine.message_id
        assert all(isinstance(outcome, PermanentDeliveryError) for outcome in outcomes[1:])
        assert "is the broker's" in str(outcomes[1])
        assert redis_client.exists(stream, f"{stream}:modalkit-epoch") == before
    finally:
        redis_client.delete(fine_queue)
