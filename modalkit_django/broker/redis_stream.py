"""TaskIQ's acknowledged Redis stream broker, made to ride out Redis and worker failures.

Upstream's ``taskiq_redis.RedisStreamBroker`` is kept for its wire format and consumer
group; this subclass changes what a job service needs changed:

- **Redis going away does not kill the worker.** Upstream's ``listen()`` raises and the
  worker process exits (seen: ~19 restarts in a 15 s outage, each abandoning its batch).
  Here it waits and reconnects with backoff, and recreates the consumer group if Redis
  came back empty; the batches in flight finish meanwhile.
- **Nor does Redis being away when the worker starts.** Upstream's ``startup()`` fails
  (a traceback, a restart every two seconds). Here a worker logs one line and starts:
  its engine finds the jobs in the database meanwhile, and :meth:`listen` makes the
  consumer group, and says so, once Redis answers.
- **A dead worker's messages come back in seconds, a live one's never.** Messages a
  consumer read but never acknowledged are claimed by a live one after ``idle_timeout``
  (30 s here, 10 min upstream), checked every few seconds rather than only after new
  messages arrive; a consumer still running a task keeps its entries claimed, however long
  the task takes, so no task runs twice because it was slow.
- **Acknowledgements are batched and deleted.** Acks made in the same moment share one
  ``XACK`` + ``XDEL`` (upstream sends one ``XACK`` per message and never deletes); at a
  few hundred messages a second that was a third of a worker's event loop (py-spy).
- **Sends in bulk**: :meth:`kick_many` adds many messages in one pipeline.
- **Wake-ups read together run as one** (``merge``): TaskIQ's receiver costs more per
  message (~0.25 ms of CPU) than a job's claim, inference and finish. The messages of a
  task named in ``merge`` read in one ``XREADGROUP`` reach TaskIQ as one message of its
  merged task, acknowledged together once it is done; what is sent does not change.
  ``max_in_hand`` bounds the entries a consumer holds unacknowledged (TaskIQ's
  ``--max-async-tasks`` counts messages); those held past ``idle_timeout`` stop counting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

import taskiq_redis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq import AckableMessage, BrokerMessage, TaskiqMessage

from ..conf import get_settings
from ..redaction import redact_url
from . import outages

__all__ = ["SENTINEL_SCHEME", "RedisStreamBroker", "build", "ping", "sentinel_pool"]

logger = logging.getLogger(__name__)

REDIS_GONE = (RedisConnectionError, RedisTimeoutError, OSError)

# Redis Sentinel, for the broker and the health check: the master the sentinels name.
SENTINEL_SCHEME = "redis+sentinel://"


def sentinel_pool(url: str) -> SentinelConnectionPool:
    """Connections to the master of ``redis+sentinel://[:password@]h:p[,h:p…]/service[/db]``."""
    rest = url.removeprefix(SENTINEL_SCHEME)
    credentials, _, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    service, _, db = path.partition("/")
    if not hosts or not service:
        raise ValueError(f"A Sentinel URL names its sentinels and service: {SENTINEL_SCHEME}host:26379/mymaster")
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        sentinels.append((name or host, int(port) if name else 26379))
    password = unquote(credentials.partition(":")[2]) or None
    sentinel = Sentinel(sentinels)  # type: ignore[no-untyped-call]
    return SentinelConnectionPool(service, sentinel, db=int(db or 0), password=password)  # type: ignore[no-untyped-call]


def build(url: str, queue_name: str, options: dict[str, Any]) -> RedisStreamBroker:
    """The broker ``MODALKIT["BROKER"]`` names: a worker merges the ``run_job`` wake-ups
    it reads together, and holds as many as it runs at once; ``OPTIONS`` override."""
    from . import RUN_JOB, RUN_JOBS

    defaults: dict[str, Any] = {"merge": {RUN_JOB: RUN_JOBS}, "max_in_hand": get_settings().worker.wake_ups_in_hand}
    return RedisStreamBroker(url, queue_name=queue_name, **{**defaults, **options})


async def ping(url: str, timeout: float) -> None:
    """``PING`` the Redis server at ``url`` on a connection of its own, then close it."""
    pool: ConnectionPool
    if url.startswith(SENTINEL_SCHEME):
        pool = sentinel_pool(url)
        client = Redis(connection_pool=pool)
    else:
        client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        pool = client.connection_pool
    try:
        await client.ping()
    finally:
        await client.aclose()
        await pool.disconnect()
        if isinstance(pool, SentinelConnectionPool):
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()


def _raise_if_cancelled() -> None:
    """On Python 3.11, redis-py can swallow a cancellation that arrives during a blocking
    read (the read just returns): without this, a worker could not be stopped."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class RedisStreamBroker(taskiq_redis.RedisStreamBroker):
    """``url``: ``redis://``, ``rediss://`` (TLS), ``unix://``, or Redis Sentinel:
    ``redis+sentinel://[:password@]host:26379[,host:26379…]/service_name[/db]``, which
    follows the master the sentinels name through a failover.

    ``merge``: ``{"app.task": "app.task_many"}`` hands the messages of ``app.task(x)``
    read together to TaskIQ as one ``app.task_many([x, …])``; a message with keyword
    arguments or labels, or alone of its task in a read, is left as it is.
    ``max_in_hand``: read no more while this many entries are unacknowledged.
    """

    def __init__(
        self,
        url: str,
        *,
        idle_timeout: int = 30_000,
        reclaim_interval: float = 5.0,
        merge: Mapping[str, str] | None = None,
        max_in_hand: int | None = None,
        **kwargs: Any,
    ) -> None:
        sentinel = url.startswith(SENTINEL_SCHEME)
        super().__init__("redis://" if sentinel else url, idle_timeout=idle_timeout, **kwargs)
        if sentinel:
            self.connection_pool = sentinel_pool(url)  # type: ignore[assignment]
        self.reclaim_interval = reclaim_interval
        self.merge = dict(merge or {})
        # A cheap test before decoding: only a message naming a merged task can be one.
        self._merged_names = [name.encode() for name in self.merge]
        self.max_in_hand = max_in_hand
        self._in_hand: dict[tuple[str, Any], float] = {}  # (stream, entry id): when it was read
        self._room = asyncio.Event()
        self._acks: defaultdict[str, list[tuple[str, asyncio.Future[None]]]] = defaultdict(list)
        self._ack_flush: asyncio.Handle | None = None
        self._ack_tasks: set[asyncio.Task[None]] = set()
        self._where = redact_url(url)
        # Since when Redis has not answered, if it did not at startup: listen() waits for it.
        self._away_since: float | None = None

    async def startup(self) -> None:
        """Upstream's: the startup hooks, then the consumer group. In a worker, Redis not
        answering is logged and waited for, not raised: the hooks have started the worker,
        which finds its jobs in the database meanwhile. Elsewhere (a web process sending),
        it is raised, and the next send tries again."""
        try:
            await super().startup()
        except (RedisConnectionError, RedisTimeoutError) as exc:  # the group, after the hooks
            if not self.is_worker_process:
                raise
            self._away_since = outages.log_away(logger, "Redis", self._where, exc)

    async def shutdown(self) -> None:
        await super().shutdown()
        if isinstance(self.connection_pool, SentinelConnectionPool):
            for sentinel in self.connection_pool.sentinel_manager.sentinels:
                await sentinel.aclose()

    async def kick_many(self, messages: Sequence[BrokerMessage]) -> None:
        if not messages:
            return
        async with Redis(connection_pool=self.connection_pool) as redis, redis.pipeline(transaction=False) as pipe:
            for message in messages:
                queue_name = message.labels.get("queue_name") or self.queue_name
                pipe.xadd(queue_name, {b"data": message.message}, maxlen=self.maxlen, approximate=self.approximate)
            await pipe.execute()

    # --- Reading ------------------------------------------------------------------------

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        if self._away_since is not None:
            await self._wait_for_redis()
        keeper = asyncio.create_task(self._keep_in_hand())
        try:
            async for message in self._listen():
                yield message
        finally:
            keeper.cancel()

    async def _listen(self) -> AsyncGenerator[AckableMessage, None]:
        backoff = 0.1
        outage_since: float | None = None
        while True:
            try:
                async with contextlib.aclosing(self._read()) as messages:
                    async for message in messages:
                        if outage_since is not None:
                            logger.warning("Redis is back after %.1fs", time.monotonic() - outage_since)
                            outage_since = None
                        backoff = 0.1
                        yield message
            except REDIS_GONE as exc:
                _raise_if_cancelled()  # a shutdown that redis-py reported as a timeout
                if outage_since is None:
                    outage_since = time.monotonic()
                    logger.error("Lost Redis (%s); reconnecting with backoff, batches in flight go on", exc)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                logger.warning("The consumer group is gone (Redis restarted empty?); creating it again")
                with contextlib.suppress(*REDIS_GONE):
                    await self._recreate_consumer_group()
                continue
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _keep_in_hand(self) -> None:
        """While this consumer runs, the entries it holds stay its own.

        A task that runs longer than ``idle_timeout`` (a slow consumer of yours, a long
        inference) would otherwise look abandoned: another consumer's ``XAUTOCLAIM`` would
        take its entry and run it a second time. Every third of ``idle_timeout`` the
        entries held that long are claimed again by this consumer (``XCLAIM … JUSTID``),
        which resets their idle time; a consumer that dies stops doing so, and its entries
        are taken over one ``idle_timeout`` later, as before.
        """
        every = self.idle_timeout / 3000
        while True:
            await asyncio.sleep(every)
            old = time.monotonic() - every
            held: defaultdict[str, list[Any]] = defaultdict(list)
            for (stream, entry_id), read_at in list(self._in_hand.items()):
                if read_at <= old:
                    held[stream].append(entry_id)
            try:
                async with Redis(connection_pool=self.connection_pool) as redis:
                    for stream, ids in held.items():
                        await self._claim_again(redis, stream, ids, idle_ms=int(every * 1000))
            except (*REDIS_GONE, ResponseError) as exc:
                logger.warning("Could not keep %d running entries claimed: %s", sum(map(len, held.values())), exc)

    async def _claim_again(self, redis: Redis, stream: str, ids: list[Any], *, idle_ms: int) -> None:
        """Reset the idle time of those of ``ids`` this consumer still owns: one another
        consumer took over (this one stalled past ``idle_timeout``) stays the other's."""
        pending = await redis.xpending_range(
            stream,
            self.consumer_group_name,
            min=min(ids),
            max=max(ids),
            count=len(ids) + 1000,  # the range may hold others' entries too
            consumername=self.consumer_name,
            idle=idle_ms,
        )
        wanted = set(ids)
        mine: list[Any] = [entry["message_id"] for entry in pending if entry["message_id"] in wanted]
        if mine:
            await redis.xclaim(stream, self.consumer_group_name, self.consumer_name, idle_ms, mine, justid=True)

    async def _wait_for_redis(self) -> None:
        """Until Redis answers (startup said it did not): then make the consumer group."""
        assert self._away_since is not None
        await outages.wait_for(
            self._recreate_consumer_group,
            REDIS_GONE,
            logger=logger,
            name="Redis",
            where=self._where,
            since=self._away_since,
            on_failure=_raise_if_cancelled,
        )
        self._away_since = None

    async def _recreate_consumer_group(self) -> None:
        """From the stream's start: messages sent since Redis came back are read too."""
        async with Redis(connection_pool=self.connection_pool) as redis:
            for stream in (self.queue_name, *self.additional_streams):
                with contextlib.suppress(ResponseError):  # another worker was first
                    await redis.xgroup_create(stream, self.consumer_group_name, id="0", mkstream=True)

    async def _read(self) -> AsyncGenerator[AckableMessage, None]:
        next_reclaim = time.monotonic() + self.reclaim_interval
        async with Redis(connection_pool=self.connection_pool) as redis:
            while True:
                fetched: Any = await redis.xreadgroup(
                    self.consumer_group_name,
                    self.consumer_name,
                    {self.queue_name: ">", **self.additional_streams},  # type: ignore[dict-item]
                    block=self.block,
                    noack=False,
                    count=await self._room_for(self.count),
                )
                _raise_if_cancelled()
                for stream, entries in fetched or []:
                    for message in self._messages(stream, entries):
                        yield message
                if time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + self.reclaim_interval
                    for stream in (self.queue_name, *self.additional_streams):
                        async for message in self._reclaim(redis, stream):
                            yield message

    async def _reclaim(self, redis: Redis, stream: str) -> AsyncGenerator[AckableMessage, None]:
        """Messages read by a consumer that died (or is stuck) more than ``idle_timeout`` ago."""
        reply = await redis.xautoclaim(
            stream,
            self.consumer_group_name,
            self.consumer_name,
            min_idle_time=self.idle_timeout,
            count=self.unacknowledged_batch_size,
        )
        # Not those this consumer still runs (idle only by Redis's clock): run twice, the
        # second run would acknowledge them before the first stored their jobs.
        claimed = [(id, fields) for id, fields in reply[1] if fields and (stream, id) not in self._in_hand]
        if claimed:
            logger.warning("Took over %d messages another consumer read but never finished", len(claimed))
        for message in self._messages(stream, claimed):
            yield message

    async def _room_for(self, count: int | None) -> int | None:
        """How many entries to read, up to ``count``: once some are, with ``max_in_hand``."""
        if self.max_in_hand is None:
            return count
        while (held := self._held(self.max_in_hand)) >= self.max_in_hand:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.reclaim_interval):
                    await self._room.wait()
        return self.max_in_hand - held if count is None else min(count, self.max_in_hand - held)

    def _held(self, limit: int) -> int:
        """Entries in hand, less those held past ``idle_timeout`` (a long inference, or a
        message never acknowledged because a middleware raised): they cannot stop this
        consumer reading for good."""
        if len(self._in_hand) < limit:
            return len(self._in_hand)
        stale = time.monotonic() - self.idle_timeout / 1000
        return sum(read > stale for read in self._in_hand.values())

    def _messages(self, stream: Any, entries: Sequence[tuple[Any, Any]]) -> list[AckableMessage]:
        """The entries of one read as TaskIQ messages, those of each merged task as one."""
        stream_name = stream.decode() if isinstance(stream, bytes) else stream
        now = time.monotonic()
        self._in_hand.update(((stream_name, entry_id), now) for entry_id, _ in entries)
        messages = []
        merging: defaultdict[str, list[tuple[Any, bytes, Any]]] = defaultdict(list)
        for entry_id, fields in entries:
            data = fields[b"data"]
            merged = self._merged_task(data)
            if merged is None:
                messages.append(AckableMessage(data=data, ack=self._ack_entries([entry_id], stream_name)))
            else:
                merging[merged[0]].append((entry_id, data, merged[1]))
        for task_name, parts in merging.items():
            if len(parts) == 1:
                data = parts[0][1]  # as it came: nothing to merge it with
            else:
                args, task_id = [[arg for *_, arg in parts]], self.id_generator()
                data = self.formatter.dumps(
                    TaskiqMessage(task_id=task_id, task_name=task_name, labels={}, args=args, kwargs={})
                ).message
            messages.append(AckableMessage(data=data, ack=self._ack_entries([id for id, *_ in parts], stream_name)))
        return messages

    def _merged_task(self, data: bytes) -> tuple[str, Any] | None:
        """The task this message merges into, and its one argument; ``None`` if it stays apart."""
        if not any(name in data for name in self._merged_names):
            return None
        try:  # the serializer's dict, not the formatter's pydantic model: a tenth of the cost
            message = self.serializer.loadb(data)
            merged, args = self.merge.get(message["task_name"]), message["args"]
            if merged is None or message.get("kwargs") or message.get("labels") or not isinstance(args, list):
                return None
        except Exception:  # not TaskIQ's format: TaskIQ's receiver reports it, as for any message
            return None
        return (merged, args[0]) if len(args) == 1 else None

    # --- Acknowledging ------------------------------------------------------------------

    def _ack_entries(self, ids: Sequence[Any], queue_name: str) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            for id in ids:
                self._in_hand.pop((queue_name, id), None)
            self._room.set()
            loop = asyncio.get_running_loop()
            done: asyncio.Future[None] = loop.create_future()
            self._acks[queue_name].extend((id, done) for id in ids)
            if self._ack_flush is None:
                # After the acks already on their way this loop iteration have joined.
                self._ack_flush = loop.call_soon(self._start_flush)
            await done

        return ack

    def _start_flush(self) -> None:
        self._ack_flush = None
        task = asyncio.get_running_loop().create_task(self._flush_acks(self._acks))
        self._acks = defaultdict(list)
        self._ack_tasks.add(task)
        task.add_done_callback(self._ack_tasks.discard)

    async def _flush_acks(self, batches: dict[str, list[tuple[str, asyncio.Future[None]]]]) -> None:
        for queue_name, waiting in batches.items():
            ids = [id for id, _ in waiting]
            # Twice: the first command after Redis restarted goes out on a pooled connection
            # from before, which fails (seen in tests/test_faults.py); the second gets a new one.
            for attempt in (1, 2):
                try:
                    async with (
                        Redis(connection_pool=self.connection_pool) as redis,
                        redis.pipeline(transaction=False) as pipe,
                    ):
                        pipe.xack(queue_name, self.consumer_group_name, *ids)
                        # Deleted too: acknowledged entries otherwise stay in the stream forever.
                        pipe.xdel(queue_name, *ids)
                        await pipe.execute()
                    break
                except REDIS_GONE as exc:
                    if attempt == 2:
                        # The work is stored in the database: an unacknowledged message is at
                        # worst read again later, and its job is then found done.
                        logger.warning("Could not acknowledge %d messages: %s", len(ids), exc)
                except ResponseError as exc:
                    logger.warning("Could not acknowledge %d messages: %s", len(ids), exc)
                    break
            for _, done in waiting:
                if not done.done():
                    done.set_result(None)
