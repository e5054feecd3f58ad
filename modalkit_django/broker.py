"""The TaskIQ broker, and how synchronous Django code sends it messages.

``MODALKIT["BROKER"]["URL"]`` chooses the broker:

- ``None`` (the embedded default): TaskIQ's ``InMemoryBroker``; tasks run in this
  process on a background event loop, next to the web server.
- ``redis://…``: TaskIQ's ``RedisStreamBroker``, whose messages are acknowledged
  after the task ran, so a worker that dies mid-task leaves its message for another.

Tasks are registered on TaskIQ's shared broker, which hands them to the broker
built here; ``manage.py taskiq worker`` runs :func:`get_broker` in each worker.

Async code sends with ``await task.kiq(...)``. Sync code (views, on-commit hooks,
admin actions) calls :func:`kick`, which runs the send on the loop that owns the
broker: the worker's own loop inside a worker, else a background thread's loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import django
import taskiq_redis
from django.apps import apps
from redis.asyncio import Redis
from taskiq import AsyncBroker, InMemoryBroker, TaskiqEvents, TaskiqState
from taskiq.brokers.shared_broker import async_shared_broker
from taskiq.decor import AsyncTaskiqDecoratedTask

from .conf import BrokerSettings, get_settings
from .exceptions import ModalkitImproperlyConfigured

__all__ = ["akick", "get_broker", "import_task_modules", "kick", "reset", "start"]

logger = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 10.0

_lock = threading.RLock()
_broker: AsyncBroker | None = None
# The loop that owns the broker; sync code sends through it. A worker's own loop,
# else ``_bridge``: a loop this module runs in a background thread.
_loop: asyncio.AbstractEventLoop | None = None
_bridge: asyncio.AbstractEventLoop | None = None


def get_broker() -> AsyncBroker:
    """The broker for this process, built from settings on first use.

    Also TaskIQ's entry point in each worker process: with the ``spawn`` start method
    (macOS) a worker starts from scratch, so Django is set up here, before TaskIQ
    imports the task modules.
    """
    global _broker
    if not apps.ready:
        django.setup()
    with _lock:
        if _broker is None:
            _broker = build_broker(get_settings().broker)
            async_shared_broker.default_broker(_broker)
        return _broker


def build_broker(spec: BrokerSettings) -> AsyncBroker:
    broker: AsyncBroker
    if spec.url is None:
        broker = InMemoryBroker(await_inplace=False, **spec.options)
    elif spec.url.startswith(("redis://", "rediss://", "unix://")):
        broker = RedisStreamBroker(spec.url, queue_name=spec.queue_name, **spec.options)
    else:
        raise ModalkitImproperlyConfigured(
            f"MODALKIT['BROKER']['URL'] must be a redis:// URL or None, not {spec.url!r}"
        )
    broker.add_event_handler(TaskiqEvents.WORKER_STARTUP, _on_worker_startup)
    broker.add_event_handler(TaskiqEvents.WORKER_SHUTDOWN, _on_worker_shutdown)
    return broker


class RedisStreamBroker(taskiq_redis.RedisStreamBroker):
    """TaskIQ's acknowledged Redis stream broker, acknowledging in batches.

    Upstream builds a client and sends one ``XACK`` per message; at a few hundred
    messages a second that was a third of a worker's event loop (py-spy). Here the
    acknowledgements made in the same moment share one ``XACK``. Each still waits for
    it, so a message is acknowledged only after its task is done, as before. The
    acknowledged entries are deleted (``XDEL``), or the stream would grow forever.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: defaultdict[str, list[tuple[str, asyncio.Future[None]]]] = defaultdict(list)
        self._ack_flush: asyncio.Handle | None = None
        self._ack_tasks: set[asyncio.Task[None]] = set()

    def _ack_generator(self, id: str, queue_name: str) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[None] = loop.create_future()
            self._acks[queue_name].append((id, done))
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
        async with Redis(connection_pool=self.connection_pool) as redis:
            for queue_name, waiting in batches.items():
                ids = [id for id, _ in waiting]
                try:
                    # Deleted too: acknowledged entries otherwise stay in the stream forever.
                    async with redis.pipeline(transaction=False) as pipeline:
                        pipeline.xack(queue_name, self.consumer_group_name, *ids)
                        pipeline.xdel(queue_name, *ids)
                        await pipeline.execute()
                except Exception as exc:
                    for _, done in waiting:
                        done.set_exception(exc)
                else:
                    for _, done in waiting:
                        done.set_result(None)


def import_task_modules() -> None:
    """Import the modules in ``MODALKIT["TASK_MODULES"]``, registering their tasks (e.g. queue consumers)."""
    for module in get_settings().task_modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ModalkitImproperlyConfigured(f"cannot import MODALKIT['TASK_MODULES'] {module!r}: {exc}") from exc


def start() -> None:
    """Start the broker for sending from this (web) process.

    With the in-process broker this also starts the embedded worker, sweep included,
    so call it from ``wsgi.py``/``asgi.py``. Safe to call more than once.
    """
    _sending_loop()


def kick(task: AsyncTaskiqDecoratedTask[Any, Any], *args: Any) -> None:
    """Send ``task(*args)`` from synchronous code and wait until the broker has it."""
    loop = _sending_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise RuntimeError("kick() blocks; from the broker's own loop use `await task.kiq(...)`")
    # An empty context: the caller's (an async view's async_to_sync, say) must not leak
    # into tasks that the in-process broker starts, or their sync_to_async calls would
    # be routed to a request thread that is gone by then.
    send = contextvars.Context().run(asyncio.run_coroutine_threadsafe, task.kiq(*args), loop)
    send.result(SEND_TIMEOUT_SECONDS)


async def akick(task: AsyncTaskiqDecoratedTask[Any, Any], *args: Any) -> None:
    """Send ``task(*args)`` from async code running on the broker's loop."""
    get_broker()  # makes sure the shared tasks have a broker to send through
    await task.kiq(*args)


def reset(**kwargs: Any) -> None:
    """``setting_changed`` receiver: the next use builds a broker from the new settings."""
    global _broker, _loop, _bridge
    if kwargs.get("setting", "MODALKIT") != "MODALKIT":
        return
    with _lock:
        broker, bridge = _broker, _bridge
        _broker = _loop = _bridge = None
    if broker is not None and bridge is not None:
        asyncio.run_coroutine_threadsafe(broker.shutdown(), bridge).result(SEND_TIMEOUT_SECONDS)
        bridge.call_soon_threadsafe(bridge.stop)


def _sending_loop() -> asyncio.AbstractEventLoop:
    global _loop, _bridge
    with _lock:
        if _loop is None:
            broker = get_broker()
            bridge = asyncio.new_event_loop()
            threading.Thread(target=_run_bridge, args=(bridge,), name="modalkit-broker", daemon=True).start()
            try:
                # With the in-process broker this runs _on_worker_startup on the bridge.
                asyncio.run_coroutine_threadsafe(broker.startup(), bridge).result(SEND_TIMEOUT_SECONDS)
            except BaseException:
                bridge.call_soon_threadsafe(bridge.stop)
                raise
            _bridge = _loop = bridge
        return _loop


def _forget_after_fork() -> None:
    """In a forked child: the bridge thread and the broker's connections stayed behind."""
    global _lock, _broker, _loop, _bridge
    _lock = threading.RLock()
    _broker = _loop = _bridge = None


os.register_at_fork(after_in_child=_forget_after_fork)


def _run_bridge(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


async def _on_worker_startup(state: TaskiqState) -> None:
    global _loop
    from . import worker

    # The embedded worker's tasks (`manage.py taskiq worker` has imported them already);
    # first, so that a module that fails to import leaves no half-started loop behind.
    import_task_modules()
    # No lock: the bridge thread runs this while _sending_loop holds it.
    _loop = asyncio.get_running_loop()
    state.modalkit_sweeper = asyncio.create_task(worker.run_sweeper())
    logger.info("modalkit worker started; sweeping every %ss", get_settings().worker.sweep_interval_seconds)


async def _on_worker_shutdown(state: TaskiqState) -> None:
    from . import worker

    sweeper = getattr(state, "modalkit_sweeper", None)
    if sweeper is not None:
        sweeper.cancel()
    await worker.close_backends()
    await worker.close_db_connections()
