"""The TaskIQ broker, and how code outside a worker sends it messages.

``MODALKIT["BROKER"]["URL"]`` chooses the broker:

- ``None`` (the embedded default): TaskIQ's ``InMemoryBroker``; tasks run in this
  process on a background event loop, next to the web server.
- ``redis://…`` (``rediss://``, ``unix://``, ``redis+sentinel://``): an acknowledged Redis
  stream broker (``redis_stream.py``, the ``redis`` extra), so a worker that dies
  mid-task leaves its messages for another.
- ``amqp://…`` (``amqps://``): RabbitMQ, a quorum queue (``rabbitmq.py``, the
  ``rabbitmq`` extra).
- ``nats://…``: NATS JetStream, a durable pull consumer on a work-queue stream
  (``jetstream.py``, the ``nats`` extra).

Each is only a wake-up: workers claim the oldest runnable jobs from the database,
whatever a message names, and look there at every poll anyway. The URL's scheme picks
the module (:data:`TRANSPORTS`), imported only when chosen: the extras are optional.

This module knows TaskIQ, nothing of jobs: tasks are registered on TaskIQ's
shared broker, which hands them to the broker built here, and what a worker does when
it starts and stops is registered by the app (:func:`add_worker_hook`).

Async code on the broker's loop sends with :func:`akick`/:func:`akick_many`. Sync code
calls :func:`submit` (schedule a coroutine on the broker's loop, without waiting) or
:func:`kick` (send and wait): a worker's own loop inside a worker, else a loop this
module runs in a background thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import django
from asgiref.sync import sync_to_async
from django.apps import apps
from django.db import connections
from django.utils.module_loading import import_string
from taskiq import AsyncBroker, InMemoryBroker, TaskiqEvents, TaskiqMessage, TaskiqState
from taskiq.brokers.shared_broker import async_shared_broker
from taskiq.decor import AsyncTaskiqDecoratedTask

from ..conf import BrokerSettings, get_settings
from ..exceptions import ModalkitImproperlyConfigured
from ..redaction import redact_url

__all__ = [
    "TRANSPORTS",
    "Transport",
    "add_worker_hook",
    "akick",
    "akick_many",
    "build_broker",
    "describe_broker",
    "get_broker",
    "kick",
    "reaches_workers",
    "reset",
    "start",
    "submit",
    "transport_for",
]

logger = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 10.0
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")


@dataclass(frozen=True)
class Transport:
    """A broker chosen by the scheme of ``MODALKIT["BROKER"]["URL"]``."""

    name: str  # as the health check reports it
    schemes: tuple[str, ...]
    build: str  # dotted path: (url, queue name, settings' OPTIONS) -> the broker
    ping: str  # dotted path: async (url, timeout), raises if the broker does not answer
    extra: str  # pip install "modalkit-django[extra]"
    requires: tuple[str, ...]  # the modules the extra installs
    holds: str  # what QUEUE_NAME names there: "stream", "queue"


TRANSPORTS = (
    Transport(
        "redis",
        REDIS_SCHEMES,
        "modalkit_django.broker.redis_stream.build",
        "modalkit_django.broker.redis_stream.ping",
        "redis",
        ("taskiq_redis", "redis"),
        "stream",
    ),
    Transport(
        "rabbitmq",
        ("amqp://", "amqps://"),
        "modalkit_django.broker.rabbitmq.build",
        "modalkit_django.broker.rabbitmq.ping",
        "rabbitmq",
        ("taskiq_aio_pika", "aio_pika"),
        "queue",
    ),
    Transport(
        "nats",
        ("nats://",),
        "modalkit_django.broker.jetstream.build",
        "modalkit_django.broker.jetstream.ping",
        "nats",
        ("taskiq_nats", "nats"),
        "stream",
    ),
)


def transport_for(url: str) -> Transport | None:
    """The transport a broker URL selects; ``None`` for a scheme none takes."""
    for transport in TRANSPORTS:
        if url.startswith(transport.schemes):
            return transport
    return None


def url_forms() -> str:
    """The schemes every transport takes, for error messages."""
    return ", ".join(scheme for transport in TRANSPORTS for scheme in transport.schemes)


# The tasks' names on the wire (see tasks.py). A Redis stream worker hands the run_job
# messages of one read to TaskIQ as one run_jobs: one pass of TaskIQ's receiver for the
# lot, not one per job (redis_stream.py).
RUN_JOB = "modalkit.run_job"
RUN_JOBS = "modalkit.run_jobs"

WorkerHook = Callable[[TaskiqState], Awaitable[None]]

_lock = threading.RLock()
_broker: AsyncBroker | None = None
# The loop that owns the broker; sync code sends through it. A worker's own loop,
# else ``_bridge``: a loop this module runs in a background thread.
_loop: asyncio.AbstractEventLoop | None = None
_bridge: asyncio.AbstractEventLoop | None = None
# On the sending loop: the broker's startup (e.g. creating the stream's consumer group),
# tried again on the next send if it failed. Inside a worker, TaskIQ has done it.
_startup: asyncio.Future[None] | None = None
_started_here = False  # start() ran in this process
_hooks: dict[TaskiqEvents, list[WorkerHook]] = {TaskiqEvents.WORKER_STARTUP: [], TaskiqEvents.WORKER_SHUTDOWN: []}


def add_worker_hook(event: TaskiqEvents, hook: WorkerHook) -> None:
    """Run ``hook`` when a worker (or the embedded broker) starts or stops. Idempotent."""
    if hook not in _hooks[event]:
        _hooks[event].append(hook)


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
    else:
        transport = transport_for(spec.url)
        if transport is None:
            raise ModalkitImproperlyConfigured(
                f"MODALKIT['BROKER']['URL'] must be a {url_forms()} URL, or None, not {spec.url!r}"
            )
        try:
            build = import_string(transport.build)
        except ImportError as exc:
            if (exc.name or "").partition(".")[0] not in transport.requires:
                raise
            raise ModalkitImproperlyConfigured(
                f"MODALKIT['BROKER']['URL'] {spec.url!r} needs {exc.name!r}, which is not installed: "
                f'pip install "modalkit-django[{transport.extra}]"'
            ) from exc
        broker = build(spec.url, spec.stream_name(), dict(spec.options))
    for event, hooks in _hooks.items():
        for hook in hooks:
            broker.add_event_handler(event, hook)
    broker.add_event_handler(TaskiqEvents.WORKER_STARTUP, _own_loop)
    return broker


def describe_broker() -> str:
    """The broker as a worker's start-up line names it: the URL, its credentials masked,
    and the stream or queue it reads (``redis://127.0.0.1:6379/0 (stream app:jobs)``)."""
    spec = get_settings().broker
    if spec.url is None:
        return "in-process"
    transport = transport_for(spec.url)
    holds = transport.holds if transport is not None else "queue"
    return f"{redact_url(spec.url)} ({holds} {getattr(get_broker(), 'queue_name', spec.stream_name())})"


async def _own_loop(state: TaskiqState) -> None:
    """In a worker, sync code sends through the worker's own loop, started by TaskIQ."""
    global _loop, _startup
    _loop = asyncio.get_running_loop()
    if _startup is None:
        _startup = _loop.create_future()
        _startup.set_result(None)


async def _ready() -> None:
    """Start the broker for sending, once; after a failure, try again."""
    global _startup
    if _startup is None or (_startup.done() and _startup.exception() is not None):
        _startup = asyncio.ensure_future(get_broker().startup())
    await asyncio.shield(_startup)


def start() -> None:
    """Start the broker for sending from this (web) process.

    With the in-process broker this also starts the embedded worker, sweep included. The
    app calls it when a server process serves its first request (``apps.py``); call it
    yourself to start sooner. Safe to call more than once. A broker that cannot be reached
    now is only logged: the web process serves anyway, keeps the jobs it accepts, and
    connects on the next send.
    """
    global _started_here
    _started_here = True
    try:
        submit(_ready()).result(SEND_TIMEOUT_SECONDS)
    except ModalkitImproperlyConfigured:
        raise
    except Exception as exc:
        logger.warning("The broker is not reachable yet (%s: %s); serving anyway", type(exc).__name__, exc)


def reaches_workers() -> bool:
    """Whether a message sent from this process reaches a worker: always through an
    out-of-process broker; through the in-process one only where :func:`start` ran (a
    process that serves requests, whose embedded worker runs it). Elsewhere (a ``manage.py`` command, a
    script) sending would start a worker of its own in that process, cut off when it exits."""
    return get_settings().broker.url is not None or _started_here


def submit(coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
    """Run ``coroutine`` on the broker's loop; returns at once (the future says how it went)."""
    loop = _sending_loop()
    # An empty context: the caller's (an async view's async_to_sync, say) must not leak
    # into tasks that the in-process broker starts, or their sync_to_async calls would
    # be routed to a request thread that is gone by then.
    return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coroutine, loop)


def kick(task: AsyncTaskiqDecoratedTask[Any, Any], *args: Any) -> None:
    """Send ``task(*args)`` from synchronous code and wait until the broker has it."""
    loop = _sending_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise RuntimeError("kick() blocks; from the broker's own loop use `await akick(...)`")
    submit(akick(task, *args)).result(SEND_TIMEOUT_SECONDS)


async def akick(task: AsyncTaskiqDecoratedTask[Any, Any], *args: Any) -> None:
    """Send ``task(*args)`` from async code running on the broker's loop."""
    await _ready()  # also gives the shared tasks a broker to send through
    await task.kiq(*args)


async def akick_many(task: AsyncTaskiqDecoratedTask[Any, Any], args: Sequence[Any]) -> None:
    """Send ``task(arg)`` for each of ``args``: one round trip to Redis for the lot."""
    await _ready()
    broker = get_broker()
    if hasattr(broker, "kick_many"):
        messages = [
            TaskiqMessage(task_id=broker.id_generator(), task_name=task.task_name, labels={}, args=[arg], kwargs={})
            for arg in args
        ]
        await broker.kick_many([broker.formatter.dumps(message) for message in messages])
    else:
        await asyncio.gather(*(task.kiq(arg) for arg in args))


def reset(**kwargs: Any) -> None:
    """``setting_changed`` receiver: the next use builds a broker from the new settings."""
    global _broker, _loop, _bridge, _startup, _started_here
    if kwargs.get("setting", "MODALKIT") != "MODALKIT":
        return
    with _lock:
        broker, bridge, started = _broker, _bridge, _startup
        _broker = _loop = _bridge = _startup = None
        _started_here = False
    if broker is not None and bridge is not None:
        if started is not None and started.done() and started.exception() is None:
            asyncio.run_coroutine_threadsafe(broker.shutdown(), bridge).result(SEND_TIMEOUT_SECONDS)
        # Whatever the bridge's tasks queried the database with (sync_to_async's thread) closes too.
        close = sync_to_async(connections.close_all, thread_sensitive=True)()
        asyncio.run_coroutine_threadsafe(close, bridge).result(SEND_TIMEOUT_SECONDS)
        bridge.call_soon_threadsafe(bridge.stop)


def _sending_loop() -> asyncio.AbstractEventLoop:
    """The loop sync code sends through, started on first use; connects nowhere itself."""
    global _loop, _bridge
    with _lock:
        if _loop is None:
            get_broker()
            bridge = asyncio.new_event_loop()
            threading.Thread(target=_run_bridge, args=(bridge,), name="modalkit-broker", daemon=True).start()
            _bridge = _loop = bridge
        return _loop


def _forget_after_fork() -> None:
    """In a forked child: the bridge thread and the broker's connections stayed behind."""
    global _lock, _broker, _loop, _bridge, _startup
    _lock = threading.RLock()
    _broker = _loop = _bridge = _startup = None


os.register_at_fork(after_in_child=_forget_after_fork)


def _run_bridge(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()
