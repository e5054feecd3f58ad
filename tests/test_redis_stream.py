"""The Redis stream broker: batched acks, and riding out Redis and worker failures.

Redis is killed and restarted here: a private ``redis-server`` of the test's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from taskiq import AckableMessage, BrokerMessage, TaskiqEvents, TaskiqMessage

from modalkit_django.broker.jetstream import NatsJetStreamBroker
from modalkit_django.broker.redis_stream import RedisStreamBroker

from .private_services import PrivateNats, PrivateRedis


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


def broker_message(n: int) -> BrokerMessage:
    return BrokerMessage(task_id=str(n), task_name="t", message=str(n).encode(), labels={})


@contextlib.asynccontextmanager
async def reading(stream: RedisStreamBroker) -> AsyncIterator[asyncio.Queue[AckableMessage]]:
    """``stream.listen()`` running in the background, its messages put on a queue."""
    received: asyncio.Queue[AckableMessage] = asyncio.Queue()

    async def read() -> None:
        async for message in stream.listen():
            await received.put(message)

    reader = asyncio.create_task(read())
    try:
        yield received
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def take(received: asyncio.Queue[AckableMessage], count: int, timeout: float = 15) -> list[bytes]:
    async with asyncio.timeout(timeout):
        return [bytes((await received.get()).data) for _ in range(count)]


def xack_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_xack", {}).get("calls", 0))


def test_acks_made_together_share_one_xack_and_leave_no_entries(redis_client: redis.Redis) -> None:
    queue = f"modalkit-test-acks-{uuid.uuid4().hex[:8]}"
    stream = RedisStreamBroker(settings.REDIS_URL, queue_name=queue, xread_block=100)

    async def receive_and_ack() -> int:
        await stream.startup()
        for n in range(40):
            redis_client.xadd(queue, {b"data": str(n).encode()})
        received: list[Any] = []
        async for message in stream.listen():
            received.append(message)
            if len(received) == 40:
                break
        before = xack_calls(redis_client)
        await asyncio.gather(*(message.ack() for message in received))
        await stream.shutdown()
        return xack_calls(redis_client) - before

    try:
        assert asyncio.run(receive_and_ack()) == 1  # upstream sends one per message
        assert redis_client.xlen(queue) == 0  # acknowledged entries are deleted, not kept forever
    finally:
        redis_client.delete(queue)


def test_kick_many_adds_every_message_in_one_round_trip(private_redis: PrivateRedis) -> None:
    stream = RedisStreamBroker(private_redis.url, queue_name="q", xread_block=100)

    async def send_and_read() -> list[bytes]:
        await stream.startup()
        await stream.kick_many([broker_message(n) for n in range(50)])
        async with reading(stream) as received:
            messages = await take(received, 50)
        await stream.shutdown()
        return messages

    assert sorted(asyncio.run(send_and_read()), key=int) == [str(n).encode() for n in range(50)]


def test_listening_rides_out_redis_restarting_empty(private_redis: PrivateRedis) -> None:
    stream = RedisStreamBroker(private_redis.url, queue_name="q", xread_block=100)

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        await stream.startup()
        async with reading(stream) as received:
            await stream.kick_many([broker_message(n) for n in range(3)])
            before = await take(received, 3)
            private_redis.kill()
            await asyncio.sleep(1)  # the reader meets the outage and backs off, but keeps going
            private_redis.start()  # empty: no stream, no consumer group
            await stream.kick_many([broker_message(n) for n in range(3, 6)])
            after = await take(received, 3)
        await stream.shutdown()
        return before, after

    before, after = asyncio.run(scenario())
    assert before == [b"0", b"1", b"2"]
    # Sent after the restart but before the group was made again: read all the same.
    assert after == [b"3", b"4", b"5"]


def test_messages_a_dead_consumer_never_acknowledged_are_taken_over(private_redis: PrivateRedis) -> None:
    dead = RedisStreamBroker(private_redis.url, queue_name="q", xread_block=100)
    alive = RedisStreamBroker(
        private_redis.url, queue_name="q", xread_block=100, idle_timeout=300, reclaim_interval=0.1
    )

    async def scenario() -> list[bytes]:
        await dead.startup()
        await dead.kick_many([broker_message(n) for n in range(3)])
        async with reading(dead) as received:
            await take(received, 3)  # read, never acknowledged: then the consumer "dies"
        await alive.startup()
        async with reading(alive) as received:
            messages = await take(received, 3)
        await dead.shutdown()
        await alive.shutdown()
        return messages

    assert sorted(asyncio.run(scenario())) == [b"0", b"1", b"2"]


def test_acks_that_cannot_reach_redis_do_not_fail_the_task(private_redis: PrivateRedis) -> None:
    stream = RedisStreamBroker(private_redis.url, queue_name="q", xread_block=100, socket_connect_timeout=1)

    async def scenario() -> None:
        await stream.startup()
        await stream.kick_many([broker_message(0)])
        async with reading(stream) as received:
            message = await received.get()
        private_redis.kill()
        await message.ack()  # logged, not raised: the work is already stored
        await stream.shutdown()

    asyncio.run(scenario())


def task_message(stream: RedisStreamBroker, task_name: str, *args: Any, **kwargs: Any) -> BrokerMessage:
    message = TaskiqMessage(task_id=uuid.uuid4().hex, task_name=task_name, labels={}, args=list(args), kwargs=kwargs)
    return stream.formatter.dumps(message)


def decoded(stream: RedisStreamBroker, messages: list[AckableMessage]) -> list[tuple[str, list[Any], dict[str, Any]]]:
    loaded = [stream.formatter.loads(bytes(message.data)) for message in messages]
    return sorted((message.task_name, message.args, message.kwargs) for message in loaded)


def test_wake_ups_read_together_reach_taskiq_as_one_message(private_redis: PrivateRedis) -> None:
    stream = RedisStreamBroker(private_redis.url, queue_name="q", xread_block=100, merge={"one": "many"})
    client = redis.Redis.from_url(private_redis.url)

    async def scenario() -> tuple[list[tuple[str, list[Any], dict[str, Any]]], int, int]:
        await stream.startup()
        await stream.kick_many(
            [task_message(stream, "one", f"id-{n}") for n in range(5)]
            + [task_message(stream, "other", "x"), task_message(stream, "one", "y", keyword=1)]
        )
        async with reading(stream) as received:
            messages = [await received.get() for _ in range(3)]
            merged = next(message for message in messages if b'"many"' in bytes(message.data))
            await merged.ack()
            pending_after_merged_ack = client.xpending("q", stream.consumer_group_name)["pending"]
            await asyncio.gather(*(message.ack() for message in messages if message is not merged))
        await stream.shutdown()
        return decoded(stream, messages), pending_after_merged_ack, client.xlen("q")

    messages, pending, left = asyncio.run(scenario())
    assert messages == [
        ("many", [[f"id-{n}" for n in range(5)]], {}),  # in the order they were sent
        ("one", ["y"], {"keyword": 1}),  # keyword arguments: left as it is
        ("other", ["x"], {}),
    ]
    assert pending == 2  # acknowledging the merged message acknowledged its five entries, no more
    assert left == 0


def test_a_wake_up_alone_in_its_read_is_passed_on_as_sent(private_redis: PrivateRedis) -> None:
    stream = RedisStreamBroker(private_redis.url, queue_name="q", xread_block=100, merge={"one": "many"})
    sent = task_message(stream, "one", "id-0")

    async def scenario() -> list[bytes]:
        await stream.startup()
        await stream.kick_many([sent])
        async with reading(stream) as received:
            messages = await take(received, 1)
        await stream.shutdown()
        return messages

    assert asyncio.run(scenario()) == [sent.message]


def test_wake_ups_a_dead_consumer_left_are_taken_over_merged(private_redis: PrivateRedis) -> None:
    merge = {"one": "many"}
    dead = RedisStreamBroker(private_redis.url, queue_name="q", xread_block=100, merge=merge)
    alive = RedisStreamBroker(
        private_redis.url, queue_name="q", xread_block=100, idle_timeout=300, reclaim_interval=0.1, merge=merge
    )

    async def scenario() -> list[tuple[str, list[Any], dict[str, Any]]]:
        await dead.startup()
        await dead.kick_many([task_message(dead, "one", n) for n in range(4)])
        async with reading(dead) as received:
            await received.get()  # read, never acknowledged: then the consumer "dies"
        await alive.startup()
        async with reading(alive) as received:
            message = await asyncio.wait_for(received.get(), 15)
            await message.ack()
        await dead.shutdown()
        await alive.shutdown()
        return decoded(alive, [message])

    assert asyncio.run(scenario()) == [("many", [[0, 1, 2, 3]], {})]


def test_a_consumer_holds_at_most_max_in_hand_entries_unacknowledged(private_redis: PrivateRedis) -> None:
    stream = RedisStreamBroker(private_redis.url, queue_name="q", xread_block=100, max_in_hand=5)

    async def scenario() -> tuple[int, int, int]:
        await stream.startup()
        await stream.kick_many([broker_message(n) for n in range(20)])
        async with reading(stream) as received:
            held = [await received.get() for _ in range(5)]
            await asyncio.sleep(0.5)
            while_full = received.qsize()  # the other 15 stay in the stream, for other workers
            await asyncio.gather(*(message.ack() for message in held[:3]))
            await take(received, 3)
            await asyncio.sleep(0.5)
            after_acks = received.qsize()
        await stream.shutdown()
        return while_full, after_acks, redis.Redis.from_url(private_redis.url).xlen("q")

    assert asyncio.run(scenario()) == (0, 0, 17)


def test_entries_never_acknowledged_stop_counting_after_the_idle_timeout(private_redis: PrivateRedis) -> None:
    stream = RedisStreamBroker(
        private_redis.url, queue_name="q", xread_block=100, max_in_hand=2, idle_timeout=1000, reclaim_interval=0.1
    )

    async def scenario() -> tuple[int, list[bytes]]:
        await stream.startup()
        await stream.kick_many([broker_message(n) for n in range(4)])
        async with reading(stream) as received:
            # Never acknowledged (a middleware raised): after idle_timeout the consumer reads on,
            # and does not take its own two back as if another consumer had left them.
            await asyncio.sleep(0.5)
            before_the_timeout = received.qsize()
            messages = await take(received, 4, timeout=10)
            await asyncio.sleep(1.5)
            messages += [bytes(message.data) for message in [received.get_nowait() for _ in range(received.qsize())]]
        await stream.shutdown()
        return before_the_timeout, messages

    before_the_timeout, messages = asyncio.run(scenario())
    assert before_the_timeout == 2
    assert sorted(messages) == [b"0", b"1", b"2", b"3"]


def test_a_malformed_wake_up_is_passed_on_as_it_came(private_redis: PrivateRedis) -> None:
    stream = RedisStreamBroker(private_redis.url, queue_name="q", xread_block=100, merge={"one": "many"})
    bad = [b'{"task_id": "a", "task_name": "one", "args": null}', b'{"task_id": "b", "task_name": "one", "args": 5}']

    async def scenario() -> list[bytes]:
        await stream.startup()
        await stream.kick_many([BrokerMessage(task_id="x", task_name="one", message=data, labels={}) for data in bad])
        async with reading(stream) as received:
            messages = await take(received, 2)  # to TaskIQ, which reports them; the reader goes on
            await stream.kick_many([task_message(stream, "one", "id-0")])
            messages += await take(received, 1)
        await stream.shutdown()
        return messages

    *malformed, good = asyncio.run(scenario())
    assert sorted(malformed) == sorted(bad)
    assert stream.formatter.loads(good).args == ["id-0"]


def test_an_entry_a_live_consumer_holds_past_the_idle_timeout_is_never_taken_over(private_redis: PrivateRedis) -> None:
    """A task slower than ``idle_timeout`` (a TaskIQ consumer of yours, a long inference):
    its consumer keeps the entry claimed while it runs, so no other runs it a second time."""
    options = {"xread_block": 100, "idle_timeout": 600, "reclaim_interval": 0.1}
    slow = RedisStreamBroker(private_redis.url, queue_name="q", **options)
    other = RedisStreamBroker(private_redis.url, queue_name="q", **options)

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        await slow.startup()
        await other.startup()
        await slow.kick_many([broker_message(1)])
        async with reading(slow) as held:
            [message] = [await held.get()]
            async with reading(other) as elsewhere:
                await asyncio.sleep(3)  # five idle timeouts, the entry still being worked on
                taken = [bytes(elsewhere.get_nowait().data) for _ in range(elsewhere.qsize())]
            await message.ack()
        # A consumer that dies holding an entry: the other takes it over, as before.
        await slow.kick_many([broker_message(2)])
        async with reading(slow) as held:
            await take(held, 1)
        async with reading(other) as elsewhere:
            taken_over = await take(elsewhere, 1, timeout=10)
        await slow.shutdown()
        await other.shutdown()
        return taken, taken_over

    taken, taken_over = asyncio.run(scenario())
    assert taken == []
    assert taken_over == [b"2"]


# A broker whose server a test starts in a moment: (the server, the broker on it, its name, its logger).
AWAY: dict[str, tuple[Any, Callable[[str], Any], str]] = {
    "redis": (PrivateRedis, lambda url: RedisStreamBroker(url, queue_name="q", xread_block=100), "Redis"),
    "nats": (PrivateNats, lambda url: NatsJetStreamBroker(url, queue_name="q", fetch_timeout=0.5), "NATS"),
}


@pytest.mark.parametrize("kind", list(AWAY))
def test_a_worker_starts_while_its_broker_is_away_and_reads_once_it_answers(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    server_class, build, name = AWAY[kind]
    server = server_class()  # not started yet
    stream = build(server.url)
    stream.is_worker_process = True
    started: list[bool] = []
    stream.add_event_handler(TaskiqEvents.WORKER_STARTUP, lambda state: started.append(True))

    async def scenario() -> list[bytes]:
        await stream.startup()  # does not raise: the worker goes on with what the database holds
        assert started == [True]
        async with reading(stream) as received:
            await asyncio.sleep(1)  # listening, waiting for the broker
            server.start()
            await asyncio.sleep(0.5)  # a sender starts once the broker answers
            sender = build(server.url)
            await sender.startup()
            for n in range(3):
                await sender.kick(broker_message(n))
            got = await take(received, 3)
            await sender.shutdown()
        await stream.shutdown()
        return got

    try:
        assert asyncio.run(scenario()) == [b"0", b"1", b"2"]
    finally:
        server.stop()
    lines = [record.getMessage() for record in caplog.records if record.name == type(stream).__module__]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{name} at {server.url} does not answer (")
    assert lines[0].endswith("); retrying in the background, and running the jobs in the database meanwhile")
    assert re.fullmatch(rf"{name} at {re.escape(server.url)} answers after \d+\.\ds; reading wake-ups", lines[1])


def test_a_sender_is_told_that_redis_is_away(private_redis: PrivateRedis) -> None:
    private_redis.kill()
    stream = RedisStreamBroker(private_redis.url, queue_name="q")  # a web process: not a worker
    with pytest.raises(redis.ConnectionError):
        asyncio.run(stream.startup())  # broker.start() logs it; the next send tries again
