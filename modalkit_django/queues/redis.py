"""A queue backend that appends each message to a Redis list or stream named by the queue name.

::

    MODALKIT["QUEUES"]["redis"] = {
        "BACKEND": "modalkit_django.queues.redis.RedisBackend",
        "OPTIONS": {"url": "redis://127.0.0.1:6379/0", "mode": "stream", "key_prefix": "results:"},
    }

A list (``RPUSH``) holds the JSON body, for consumers that ``BLPOP``. A stream
(``XADD``) holds the fields ``body``, ``message_id``, ``job_id`` and ``route``, for
consumer groups that acknowledge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..conf import get_settings
from ..exceptions import DeliveryError, ModalkitImproperlyConfigured, PermanentDeliveryError
from .base import BatchQueueBackend, QueueMessage
from .clients import LoopLocal

__all__ = ["RedisBackend"]

MODES = ("list", "stream")
DEFAULT_KEY_PREFIX = "modalkit:results:"


class RedisBackend(BatchQueueBackend):
    """Appends messages to Redis: ``RPUSH`` to a list or ``XADD`` to a stream.

    Options:

    ``url``
        The Redis server, e.g. ``redis://127.0.0.1:6379/0`` (required).
    ``mode``
        ``"list"`` (default) or ``"stream"``.
    ``key_prefix``
        Put before the queue name to make the key (default ``"modalkit:results:"``, a
        namespace of its own). A key that would be the broker's stream (or one of its
        keys) is refused: a client naming such a queue must not reach the broker.
    ``max_stream_length``
        Streams only: trim each stream to about this many entries (``MAXLEN ~``).
    ``socket_timeout`` / ``socket_connect_timeout``
        Seconds (defaults 5 and 2).

    Messages sent together go out in one pipeline, each with its own result; in list
    mode, those for one list in one ``RPUSH``, in the order given.
    """

    def __init__(
        self,
        alias: str,
        *,
        url: str,
        mode: Literal["list", "stream"] = "list",
        key_prefix: str = DEFAULT_KEY_PREFIX,
        max_stream_length: int | None = None,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 2.0,
    ) -> None:
        super().__init__(alias)
        if mode not in MODES:
            raise ModalkitImproperlyConfigured(f"Queue backend {alias!r}: mode must be one of {MODES}, not {mode!r}")
        self.url = url
        self.mode = mode
        self.key_prefix = key_prefix
        self.max_stream_length = max_stream_length
        self.socket_timeout = socket_timeout
        self.socket_connect_timeout = socket_connect_timeout
        self._clients: LoopLocal[redis.asyncio.Redis] = LoopLocal(self._make_client, lambda client: client.aclose())

    async def asend_many(self, messages: Sequence[QueueMessage]) -> list[str | BaseException]:
        refused = {message.message_id: refusal for message in messages if (refusal := self._refusal(message))}
        if refused:
            sent = await self.asend_many([message for message in messages if message.message_id not in refused])
            outcomes = iter(sent)
            return [refused.get(message.message_id) or next(outcomes) for message in messages]
        commands = self._commands(messages)
        client = await self._clients.get()
        async with client.pipeline(transaction=False) as pipeline:
            for indexes in commands:
                first = messages[indexes[0]]
                key = self.key_prefix + first.queue_name
                if self.mode == "list":
                    pipeline.rpush(key, *(messages[index].body() for index in indexes))
                else:
                    fields: dict[Any, Any] = {
                        "body": first.body(),
                        "message_id": first.message_id,
                        "job_id": first.job_id,
                        "route": first.route,
                    }
                    pipeline.xadd(key, fields, maxlen=self.max_stream_length, approximate=True)
            try:
                replies = await pipeline.execute(raise_on_error=False)
            except redis.exceptions.RedisError as exc:
                error = DeliveryError(f"Redis: {type(exc).__name__}: {exc}", alias=self.alias)
                error.__cause__ = exc
                return [error] * len(messages)
        per_message: list[str | BaseException] = [""] * len(messages)
        for indexes, reply in zip(commands, replies, strict=True):
            for index in indexes:
                per_message[index] = self._outcome(messages[index], reply)
        return per_message

    def _commands(self, messages: Sequence[QueueMessage]) -> list[list[int]]:
        """The messages each command carries, by index, in order: in list mode one RPUSH per
        list for all its messages (one command and one reply to parse instead of one each; a
        list takes them all or, WRONGTYPE, none), in stream mode one XADD each."""
        if self.mode == "stream":
            return [[index] for index in range(len(messages))]
        by_key: dict[str, list[int]] = {}
        for index, message in enumerate(messages):
            by_key.setdefault(self.key_prefix + message.queue_name, []).append(index)
        return list(by_key.values())

    def _refusal(self, message: QueueMessage) -> PermanentDeliveryError | None:
        key = self.key_prefix + message.queue_name
        stream = get_settings().broker.stream_name()
        if key == stream or key.startswith(stream + ":"):
            return PermanentDeliveryError(
                f"Redis key {key!r} is the broker's; refused", alias=self.alias, queue_name=message.queue_name
            )
        return None

    def _outcome(self, message: QueueMessage, reply: Any) -> str | BaseException:
        if not isinstance(reply, BaseException):
            # RPUSH answers the list's length, which identifies nothing; XADD the entry id.
            return message.message_id if self.mode == "list" else reply.decode()
        text = f"Redis {self.key_prefix + message.queue_name!r}: {reply}"
        # WRONGTYPE: the key holds another type; retrying cannot change that.
        error_class = PermanentDeliveryError if str(reply).startswith("WRONGTYPE") else DeliveryError
        error = error_class(text, alias=self.alias, queue_name=message.queue_name)
        error.__cause__ = reply
        return error

    def _make_client(self) -> redis.asyncio.Redis:
        return redis.asyncio.Redis.from_url(
            self.url,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_connect_timeout,
            # One immediate retry covers a pooled connection the server closed; the
            # delivery's own backoff handles a server that is down.
            retry=Retry(NoBackoff(), 1),
        )

    def close(self) -> None:
        self._clients.close()

    async def aclose(self) -> None:
        await self._clients.aclose()
