"""Each broker as the tests see it from outside: what its queue holds, and losing it.

A test parametrized over ``BROKERS`` gets a :class:`Peer` for each, talking to the broker
with the broker's own client, never through modalkit_django.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import aio_pika
import aiormq
import nats
import nats.js.errors
import redis
from django.conf import settings

from modalkit_django.broker.jetstream import stream_name

__all__ = ["BROKERS", "Peer", "peer"]

BROKERS = ["redis", "rabbitmq", "nats"]


class Peer(Protocol):
    """A broker's server, reached with its own client."""

    def backlog(self, queue: str) -> int | None:
        """Wake-ups sent and not yet acknowledged; ``None`` while nobody reads the queue
        (it, or its consumer, does not exist)."""

    def lose(self, queue: str) -> None:
        """Delete the queue (or stream) and what it holds, under the workers' feet."""

    def forget(self, queue: str) -> None:
        """After a test: whatever the broker made for ``queue``."""


class RedisPeer:
    def __init__(self, url: str) -> None:
        self.url = url

    def backlog(self, queue: str) -> int | None:
        client = redis.Redis.from_url(self.url)
        try:
            if not client.exists(queue) or not client.xinfo_groups(queue):
                return None
            return int(client.xlen(queue))  # acknowledged entries are deleted
        finally:
            client.close()

    def lose(self, queue: str) -> None:
        client = redis.Redis.from_url(self.url)
        client.delete(queue)
        client.close()

    forget = lose


class RabbitMQPeer:
    def __init__(self, url: str) -> None:
        self.url = url

    def backlog(self, queue: str) -> int | None:
        async def count() -> int | None:
            connection = await aio_pika.connect(self.url)
            try:
                channel = await connection.channel()
                declared = await channel.declare_queue(queue, passive=True)
                result = declared.declaration_result
                return int(result.message_count or 0) if result.consumer_count else None
            except aiormq.exceptions.ChannelNotFoundEntity:
                return None
            finally:
                await connection.close()

        return asyncio.run(count())

    def lose(self, queue: str) -> None:
        async def delete() -> None:
            connection = await aio_pika.connect(self.url)
            channel = await connection.channel()
            await channel.queue_delete(queue)
            await connection.close()

        asyncio.run(delete())

    def forget(self, queue: str) -> None:
        """The queue, its dead letters and its exchange: what the broker declared."""

        async def delete() -> None:
            connection = await aio_pika.connect(self.url)
            channel = await connection.channel()
            await channel.queue_delete(queue)
            await channel.queue_delete(f"{queue}.dead_letter")
            await channel.exchange_delete(queue)
            await connection.close()

        asyncio.run(delete())


class NatsPeer:
    def __init__(self, url: str) -> None:
        self.url = url

    def backlog(self, queue: str) -> int | None:
        async def count() -> int | None:
            client = await nats.connect(self.url)
            try:
                name = stream_name(queue)
                info = await client.jetstream().consumer_info(name, f"{name}-workers")
                return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
            except nats.js.errors.NotFoundError:
                return None
            finally:
                await client.close()

        return asyncio.run(count())

    def lose(self, queue: str) -> None:
        async def delete() -> None:
            client = await nats.connect(self.url)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await client.jetstream().delete_stream(stream_name(queue))
            await client.close()

        asyncio.run(delete())

    forget = lose


PEERS: dict[str, type[Peer]] = {"redis": RedisPeer, "rabbitmq": RabbitMQPeer, "nats": NatsPeer}
SHARED_URLS = {"redis": "REDIS_URL", "rabbitmq": "RABBITMQ_URL", "nats": "NATS_URL"}


def peer(kind: str, url: str | None = None) -> Peer:
    """The broker ``kind`` at ``url``; by default the shared server the suite runs against."""
    return PEERS[kind](url or getattr(settings, SHARED_URLS[kind]))
