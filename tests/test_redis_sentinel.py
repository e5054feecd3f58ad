"""The broker through Redis Sentinel: it finds the master the sentinel names, and follows
it through a failover. A master, a replica and a sentinel of the test's own."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from modalkit_django.broker.redis_stream import RedisStreamBroker, sentinel_pool

from . import flow
from .private_services import PrivateRedis, free_port
from .test_redis_stream import broker_message, reading, take


class Sentinel:
    def __init__(self, master: PrivateRedis, directory: Path) -> None:
        self.port = free_port()
        config = directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\n"
            f"sentinel monitor main 127.0.0.1 {master.port} 1\n"
            "sentinel down-after-milliseconds main 1000\nsentinel failover-timeout main 5000\n"
        )
        self.process = subprocess.Popen(
            ["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.client = redis.Redis(port=self.port, socket_timeout=1)

    def master_port(self) -> int:
        return int(self.client.sentinel_get_master_addr_by_name("main")[1])

    def stop(self) -> None:
        self.client.close()
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[PrivateRedis, PrivateRedis, Sentinel]]:
    master, replica = PrivateRedis(), PrivateRedis()
    master.start()
    replica.start()
    with redis.Redis(port=replica.port) as client:
        client.replicaof("127.0.0.1", master.port)
        # The first sync takes seconds on a busy machine: the failover needs a replica that has it.
        deadline = time.monotonic() + 30
        while client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync with its master"
            time.sleep(0.1)
    sentinel = Sentinel(master, tmp_path)
    try:
        yield master, replica, sentinel
    finally:
        sentinel.stop()
        replica.stop()
        master.stop()


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    pool = sentinel_pool("redis+sentinel://:s3cret@10.0.0.1:26380,10.0.0.2/jobs/2")
    assert pool.service_name == "jobs"
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "s3cret"
    assert [(sentinel.connection_pool.connection_kwargs["host"], sentinel.connection_pool.connection_kwargs["port"])
            for sentinel in pool.sentinel_manager.sentinels] == [("10.0.0.1", 26380), ("10.0.0.2", 26379)]  # fmt: skip
    with pytest.raises(ValueError, match="names its sentinels and service"):
        sentinel_pool("redis+sentinel://10.0.0.1:26379")


def test_the_broker_follows_the_master_through_a_failover(
    replicated: tuple[PrivateRedis, PrivateRedis, Sentinel],
) -> None:
    master, replica, sentinel = replicated
    stream = RedisStreamBroker(f"redis+sentinel://127.0.0.1:{sentinel.port}/main/0", queue_name="q", xread_block=100)

    async def run() -> tuple[list[bytes], list[bytes]]:
        await stream.startup()
        await stream.kick_many([broker_message(n) for n in range(3)])
        async with reading(stream) as received:
            before = await take(received, 3)
        with redis.Redis(port=master.port) as client:  # closed even when the assertion fails
            assert await asyncio.to_thread(client.wait, 1, 15000) == 1  # the replica has it all

        master.kill()
        deadline = time.monotonic() + 30
        while await asyncio.to_thread(sentinel.master_port) != replica.port:
            assert time.monotonic() < deadline, "the sentinel did not fail over"
            await asyncio.sleep(0.2)

        while True:  # until the new master answers
            try:
                await stream.kick_many([broker_message(3)])
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "no master to send to after the failover"
                await asyncio.sleep(0.2)
        async with reading(stream) as received:
            after = await take(received, 1, timeout=30)
        await stream.shutdown()
        return before, after

    before, after = asyncio.run(run())

    assert sorted(before) == [b"0", b"1", b"2"]
    assert after == [b"3"]


@pytest.mark.django_db(databases="__all__")
def test_a_sentinel_url_passes_the_checks_and_builds_a_sentinel_broker() -> None:
    from django.core.management import call_command

    from modalkit_django.broker import build_broker
    from modalkit_django.conf import BrokerSettings

    url = "redis+sentinel://127.0.0.1:26379/main/0"
    broker = build_broker(BrokerSettings(url=url, queue_name="q"))
    assert isinstance(broker, RedisStreamBroker)
    assert broker.connection_pool.service_name == "main"  # type: ignore[attr-defined]
    with flow.with_modalkit(BROKER={"URL": url, "QUEUE_NAME": "q"}):
        call_command("check")  # no E007
