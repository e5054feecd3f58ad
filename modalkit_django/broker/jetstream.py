"""TaskIQ's NATS JetStream broker (``taskiq-nats``), made to ride out NATS going away.

``MODALKIT["BROKER"]["URL"] = "nats://user:password@host:4222"`` (several servers of a
cluster: ``nats://a:4222,nats://b:4222``) selects it; the ``nats`` extra installs it. It
is upstream's ``PullBasedJetStreamBroker``: the wake-ups are kept in a JetStream stream
and read through one durable pull consumer that every worker shares, so each wake-up
reaches one worker, and one a worker read but never acknowledged is delivered again. This
subclass changes what a job service needs changed:

- **Names of the deployment's own.** The stream and its subject are
  ``MODALKIT["BROKER"]["QUEUE_NAME"]`` (with the characters NATS refuses in a stream's
  name, ``.``, ``*``, ``>``, ``/``, ``\\`` and spaces, made ``_``); the consumer is
  ``<stream>-workers``. The stream is a work queue: a wake-up is deleted once
  acknowledged, as the Redis stream broker deletes its entries.
- **NATS going away does not stop the worker.** The client reconnects forever (upstream:
  60 attempts, then the worker's reads fail); reads that fail meanwhile are retried with
  backoff; and NATS being away when the worker starts is logged and waited for, not
  raised: the worker's engine finds its jobs in the database meanwhile.
- **Nor does the stream or the consumer being deleted.** Both are created again, by the
  worker that finds its reads failing and by a sender whose wake-up found no stream.
- **Reads in batches** of up to ``batch`` wake-ups (upstream reads one per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from taskiq import AckableMessage, AsyncBroker, BrokerMessage
from taskiq_nats import PullBasedJetStreamBroker

from ..redaction import redact_url
from . import outages

__all__ = ["NatsJetStreamBroker", "build", "ping", "stream_name"]

logger = logging.getLogger(__name__)

# What the client raises while NATS is away, or the stream or the consumer is gone.
NATS_GONE = (nats.errors.Error, asyncio.TimeoutError, ConnectionError, OSError)


def stream_name(queue_name: str) -> str:
    """The JetStream stream (and subject) for ``QUEUE_NAME``: NATS refuses some characters."""
    return re.sub(r"[.*>/\\\s]", "_", queue_name)


class NatsJetStreamBroker(PullBasedJetStreamBroker):
    """``url``: one ``nats://`` URL, or several separated by commas (a cluster's servers).

    ``queue_name``: names the stream, its subject and the consumer. ``batch``: wake-ups
    read at most per request; ``fetch_timeout``: seconds one waits for any. ``max_in_hand``:
    wake-ups delivered to the workers and not yet acknowledged, at most (the consumer's
    ``max_ack_pending``). ``ack_wait``: seconds before one a worker read but never
    acknowledged is delivered again. Other keyword arguments go to ``nats.connect`` (e.g.
    ``user_credentials``, ``tls``).
    """

    def __init__(
        self,
        url: str,
        *,
        queue_name: str,
        batch: int = 100,
        fetch_timeout: float = 5.0,
        max_in_hand: int = 1000,
        ack_wait: float = 30.0,
        **kwargs: Any,
    ) -> None:
        name = stream_name(queue_name)
        durable = f"{name}-workers"
        # Forever once connected; the first connection gives up (nats-py would retry it forever too).
        self._reconnect_attempts = kwargs.pop("max_reconnect_attempts", -1)
        kwargs.setdefault("reconnect_time_wait", 0.5)
        # nats-py logs a traceback for every failed reconnection attempt (two a second):
        # here one line when NATS goes, one when it is back.
        kwargs.setdefault("error_cb", self._on_error)
        kwargs.setdefault("disconnected_cb", self._on_disconnected)
        kwargs.setdefault("reconnected_cb", self._on_reconnected)
        super().__init__(
            [server.strip() for server in url.split(",")],
            subject=name,
            stream_name=name,
            durable=durable,
            stream_config=StreamConfig(
                name=name, subjects=[name], retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE
            ),
            consumer_config=ConsumerConfig(durable_name=durable, max_ack_pending=max_in_hand, ack_wait=ack_wait),
            pull_consume_batch=batch,
            pull_consume_timeout=fetch_timeout,
            **kwargs,
        )
        self.queue_name = name
        self._where = redact_url(url)
        # Since when NATS has not answered, if it did not at startup: listen() waits for it.
        self._away_since: float | None = None
        self._lost_since: float | None = None  # since when the connection is lost
        self._closing = False  # nats-py calls disconnected_cb on close() too

    async def _on_error(self, exc: Exception) -> None:
        logger.debug("NATS: %s: %s", type(exc).__name__, exc)

    async def _on_disconnected(self) -> None:
        if self._lost_since is None and self._away_since is None and not self._closing:
            self._lost_since = time.monotonic()
            logger.error("Lost NATS at %s; reconnecting, the jobs in the database run meanwhile", self._where)

    async def _on_reconnected(self) -> None:
        if self._lost_since is not None:
            logger.warning("NATS is back after %.1fs", time.monotonic() - self._lost_since)
            self._lost_since = None

    async def startup(self) -> None:
        """Upstream's: the startup hooks, then the connection, the stream and the consumer.
        In a worker, NATS not answering is logged and waited for, not raised."""
        await AsyncBroker.startup(self)
        try:
            await self._connect()
        except NATS_GONE as exc:
            if not self.is_worker_process:
                raise
            self._away_since = outages.log_away(logger, "NATS", self._where, exc)

    async def _connect(self) -> None:
        if not self.client.is_connected:
            await self.client.connect(self.servers, **{**self.connection_kwargs, "max_reconnect_attempts": 1})
            self.client.options["max_reconnect_attempts"] = self._reconnect_attempts
        self.js = self.client.jetstream()
        await self._add_or_reuse_stream()
        await self._startup_consumer()

    async def shutdown(self) -> None:
        self._closing = True
        if not self.client.is_closed:
            await self.client.close()
        await AsyncBroker.shutdown(self)

    async def kick(self, message: BrokerMessage) -> None:
        try:
            await super().kick(message)
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
            # No stream takes the subject (deleted): make it again, and send once more.
            # (JetStream's publish reports it as the second.)
            logger.warning("The stream %s is gone (deleted?); creating it again", self.queue_name)
            await self._add_or_reuse_stream()
            await super().kick(message)

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        if self._away_since is not None:
            await self._wait_for_nats()
        backoff = 0.1
        failing_since: float | None = None
        while True:
            try:
                messages = await self.consumer.fetch(batch=self.pull_consume_batch, timeout=self.pull_consume_timeout)
                if failing_since is not None:
                    logger.warning("Reading %s again after %.1fs", self.queue_name, time.monotonic() - failing_since)
                    failing_since = None
                backoff = 0.1
            except nats.errors.TimeoutError:
                # Nothing to read, or nothing to read from: a deleted consumer does not answer.
                messages = []
                with contextlib.suppress(*NATS_GONE):
                    await self._ensure_consumer()
            except NATS_GONE as exc:
                messages = []
                if failing_since is None:
                    failing_since = time.monotonic()
                    logger.warning("Reading %s failed (%s: %s); retrying", self.queue_name, type(exc).__name__, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                with contextlib.suppress(*NATS_GONE):
                    await self._ensure_consumer()
            for message in messages:
                yield AckableMessage(data=message.data, ack=message.ack)

    async def _ensure_consumer(self) -> None:
        """Make the stream and the consumer again if they were deleted."""
        try:
            await self.js.consumer_info(self.queue_name, self.durable)
        except nats.js.errors.NotFoundError:
            logger.warning("The stream %s or its consumer is gone (deleted?); creating them again", self.queue_name)
            with contextlib.suppress(*NATS_GONE):
                await self.consumer.unsubscribe()
            await self._add_or_reuse_stream()
            await self._startup_consumer()

    async def _wait_for_nats(self) -> None:
        """Until NATS answers (startup said it did not): then make the stream and the consumer."""
        assert self._away_since is not None
        await outages.wait_for(
            self._connect, NATS_GONE, logger=logger, name="NATS", where=self._where, since=self._away_since
        )
        self._away_since = None


async def ping(url: str, timeout: float) -> None:
    """Connect to NATS at ``url`` and ask JetStream for the account (the health check)."""
    client = await nats.connect(
        [server.strip() for server in url.split(",")],
        connect_timeout=timeout,
        allow_reconnect=False,
        max_reconnect_attempts=0,
    )
    try:
        await client.jetstream(timeout=timeout).account_info()
    finally:
        await client.close()


def build(url: str, queue_name: str, options: dict[str, Any]) -> NatsJetStreamBroker:
    """The broker ``MODALKIT["BROKER"]`` names; ``OPTIONS`` are :class:`NatsJetStreamBroker`'s."""
    return NatsJetStreamBroker(url, queue_name=queue_name, **options)
