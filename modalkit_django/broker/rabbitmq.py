"""TaskIQ's RabbitMQ broker (``taskiq-aio-pika``), made to ride out RabbitMQ going away.

``MODALKIT["BROKER"]["URL"] = "amqp://user:password@host:5672/vhost"`` (``amqps://`` for
TLS) selects it; the ``rabbitmq`` extra installs it. Upstream's ``AioPikaBroker`` is kept
for its wire format and its robust connections (aio-pika reconnects, and declares again
the exchange, the queue and the consumer); this subclass changes what a job service needs
changed:

- **Names of the deployment's own.** The queue is ``MODALKIT["BROKER"]["QUEUE_NAME"]``
  (a durable classic queue by default: it outlives a RabbitMQ restart; upstream's
  default, a quorum queue, was left without a leader by a single node killed seconds
  after declaring it, RabbitMQ 3.10, and refused every consumer), bound to a direct exchange
  of the same name, with its dead letters in ``<queue>.dead_letter``; upstream's shared
  ``taskiq`` topic exchange and ``taskiq.dead_letter`` queue would mix deployments.
- **RabbitMQ being away when the worker starts does not stop it.** Upstream's
  ``startup()`` raises and the worker process exits (a restart every two seconds). Here a
  worker logs one line and starts: its engine finds the jobs in the database meanwhile,
  and :meth:`listen` connects, and says so, once RabbitMQ answers. A sending (web)
  process is told, and its next send tries again.
- **Nor does the queue being deleted.** RabbitMQ then cancels the consumer and upstream's
  ``listen()`` ends, which ends the worker. Here the queue is declared again and read on;
  the wake-ups lost with it are found by the workers' polls.
- **A worker holds as many wake-ups as it runs at once** (``qos``, the prefetch count:
  as many as TaskIQ's ``--max-async-tasks``, 400 by default; upstream's is 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import aio_pika
import aiormq
from aio_pika import ExchangeType
from taskiq import AckableMessage, AsyncBroker
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue, QueueType

from ..conf import get_settings
from ..redaction import redact_url
from . import outages

__all__ = ["RabbitMQBroker", "build", "ping"]

logger = logging.getLogger(__name__)

# What connecting, or a channel, raises when RabbitMQ is away or the queue is gone.
RABBITMQ_GONE = (aiormq.exceptions.AMQPError, ConnectionError, OSError, asyncio.TimeoutError)


class RabbitMQBroker(AioPikaBroker):
    """``url``: ``amqp://`` or ``amqps://``. ``queue_name``: the queue, and its exchange.

    ``queue_type``: ``"classic"`` (the default: durable, on one node) or ``"quorum"``
    (replicated, for a cluster of three or more nodes).
    ``qos``: wake-ups a worker holds unacknowledged. Other keyword arguments go to
    upstream's ``AioPikaBroker`` (e.g. ``delay_queue``) and on to aio-pika's
    ``connect_robust`` (e.g. ``timeout``, ``ssl_options``).
    """

    def __init__(
        self,
        url: str,
        *,
        queue_name: str,
        queue_type: str = "classic",
        qos: int = 100,
        **kwargs: Any,
    ) -> None:
        kind = QueueType(queue_type)
        kwargs.setdefault("reconnect_interval", 1.0)  # aio-pika's 5 s: wake-ups lost meanwhile
        kwargs.setdefault("exchange", Exchange(name=queue_name, type=ExchangeType.DIRECT))
        kwargs.setdefault("task_queues", [Queue(name=queue_name, type=kind)])
        kwargs.setdefault("dead_letter_queue", Queue(name=f"{queue_name}.dead_letter", type=kind))
        super().__init__(url, qos=qos, **kwargs)
        self.queue_name = queue_name
        self._where = redact_url(url)
        # Since when RabbitMQ has not answered, if it did not at startup: listen() waits for it.
        self._away_since: float | None = None

    async def startup(self) -> None:
        """Upstream's: the startup hooks, then the connections, the exchange and the queue.
        In a worker, RabbitMQ not answering is logged and waited for, not raised: the hooks
        have started the worker, which finds its jobs in the database meanwhile."""
        await AsyncBroker.startup(self)
        try:
            await self._connect()
        except RABBITMQ_GONE as exc:
            if not self.is_worker_process:
                raise
            self._away_since = outages.log_away(logger, "RabbitMQ", self._where, exc)

    async def _connect(self) -> None:
        """Upstream's startup after the hooks; what it opened is closed if it fails."""
        try:
            await self._open()
        except RABBITMQ_GONE:
            await self._close()
            raise

    async def _open(self) -> None:
        self.write_conn = await aio_pika.connect_robust(self.url, loop=self._loop, **self._conn_kwargs)
        self.write_channel = await self.write_conn.channel()
        if self.is_worker_process:
            self.read_conn = await aio_pika.connect_robust(self.url, loop=self._loop, **self._conn_kwargs)
            self.read_channel = await self.read_conn.channel()
        await self._declare_exchanges()
        await self._declare_queues(self.write_channel)

    async def _close(self) -> None:
        for closable in (self.write_channel, self.read_channel, self.write_conn, self.read_conn):
            if closable is not None:
                with contextlib.suppress(Exception):
                    await closable.close()
        self.write_channel = self.read_channel = self.write_conn = self.read_conn = None

    async def shutdown(self) -> None:
        await AsyncBroker.shutdown(self)
        await self._close()

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        if self._away_since is not None:
            await self._wait_for_rabbitmq()
        backoff = 0.1
        while True:
            try:
                async for message in super().listen():
                    backoff = 0.1
                    yield message
                # The consumer was cancelled: the queue was deleted.
                logger.warning("RabbitMQ stopped delivering from %s (deleted?); declaring it again", self.queue_name)
            except RABBITMQ_GONE as exc:
                name = type(exc).__name__
                logger.warning("Reading %s failed (%s: %s); declaring it again", self.queue_name, name, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            with contextlib.suppress(*RABBITMQ_GONE):
                await self._reopen_read_channel()

    async def _reopen_read_channel(self) -> None:
        """A channel the broker closed (a 404 on a deleted queue closes it) is not reopened."""
        assert self.read_conn is not None
        if self.read_channel is None or self.read_channel.is_closed:
            self.read_channel = await self.read_conn.channel()

    async def _wait_for_rabbitmq(self) -> None:
        """Until RabbitMQ answers (startup said it did not): then connect and declare."""
        assert self._away_since is not None
        await outages.wait_for(
            self._connect, RABBITMQ_GONE, logger=logger, name="RabbitMQ", where=self._where, since=self._away_since
        )
        self._away_since = None


async def ping(url: str, timeout: float) -> None:
    """Connect to RabbitMQ at ``url`` (the health check), then close the connection."""
    connection = await aio_pika.connect(url, timeout=timeout)
    await connection.close()


def build(url: str, queue_name: str, options: dict[str, Any]) -> RabbitMQBroker:
    """The broker ``MODALKIT["BROKER"]`` names; ``OPTIONS`` are :class:`RabbitMQBroker`'s."""
    defaults: dict[str, Any] = {"qos": get_settings().worker.wake_ups_in_hand}
    return RabbitMQBroker(url, queue_name=queue_name, **{**defaults, **options})
