"""Readiness checks: can this process reach what a job needs?

:func:`acheck` runs every check concurrently, each bounded by ``timeout`` seconds:

``database``
    ``SELECT 1`` on the default database, on one of the API's database threads.
``broker``
    Redis ``PING`` through ``MODALKIT["BROKER"]["URL"]`` (Sentinel included); the
    in-process broker is this process, so it is ``ok``.
``queue.<alias>``
    Each backend of ``MODALKIT["QUEUES"]`` that can be checked without sending: a Redis
    backend is ``PING``\\ed, the in-process memory backend is ``ok``. The others (SQS,
    webhooks, ModalKit adapters, TaskIQ consumers) are ``skipped``: only a send would
    tell, and a check must not send.
``inference``
    With :class:`~modalkit_django.clients.modal.ModalBackend`, the lookup of the deployed
    class (Modal's ``ClassGet``, nothing is run); ``skipped`` for any other backend.

Reports say what failed and why, never how to get in: error texts pass through
:func:`~modalkit_django.redaction.redact_text`, which masks the credentials URLs carry.
A check that does not answer in time is abandoned (a database thread stuck on a dead
server stays stuck until the driver's own timeout), and reported as an ``error``.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from django.db import connections

from ..api.threads import run_sync
from ..broker import REDIS_SCHEMES
from ..clients import get_inference_backend
from ..clients.modal import ModalBackend
from ..conf import get_settings
from ..queues import queues
from ..queues.memory import MemoryBackend
from ..redaction import redact_text

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "Check", "Report", "acheck", "check"]

DEFAULT_TIMEOUT_SECONDS = 2.0

Status = Literal["ok", "error", "skipped"]
# What a probe found: its status, and a word on it ("in-process", why it was skipped).
Finding = tuple[Status, str]
Probe = Callable[[float], Awaitable[Finding]]


@dataclass(frozen=True)
class Check:
    """One check's outcome. ``error`` is set when ``status`` is ``"error"``."""

    name: str
    status: Status
    duration_ms: float
    detail: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Report:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        """Ready: no check failed (skipped ones do not count against it)."""
        return all(check.status != "error" for check in self.checks)

    @property
    def failed(self) -> list[str]:
        return [check.name for check in self.checks if check.status == "error"]

    def as_dict(self) -> dict[str, Any]:
        checks = {check.name: _fields(check) for check in self.checks}
        return {"status": "ok" if self.ok else "error", "checks": checks}


def _fields(check: Check) -> dict[str, Any]:
    return {key: value for key, value in asdict(check).items() if key != "name"}


async def acheck(*, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> Report:
    """Run every check concurrently, each for at most ``timeout`` seconds."""
    probes: list[tuple[str, Probe]] = [("database", _database), ("broker", _broker)]
    try:
        aliases = list(get_settings().queues)
    except Exception as exc:  # the settings themselves are broken: say so, check the rest
        probes.append(("queues", _raise(exc)))
        aliases = []
    probes += [(f"queue.{alias}", _queue(alias)) for alias in aliases]
    probes.append(("inference", _inference))
    return Report(list(await asyncio.gather(*(_timed(name, probe, timeout) for name, probe in probes))))


def check(*, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> Report:
    """:func:`acheck` from synchronous code (a management command)."""
    return asyncio.run(acheck(timeout=timeout))


async def _timed(name: str, probe: Probe, timeout: float) -> Check:
    started = time.perf_counter()
    error: str | None = None
    try:
        async with asyncio.timeout(timeout):
            status, detail = await probe(timeout)
    except TimeoutError:
        status, detail, error = "error", "", f"no answer within {timeout:g} s"
    except Exception as exc:  # a health check reports every failure, whatever it is
        status, detail, error = "error", "", redact_text(f"{type(exc).__name__}: {exc}")[:500]
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    return Check(name=name, status=status, duration_ms=duration_ms, detail=redact_text(detail), error=error)


def _raise(exc: Exception) -> Probe:
    async def probe(timeout: float) -> Finding:
        raise exc

    return probe


# --- The probes ----------------------------------------------------------------------------


def _select_one() -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _database(timeout: float) -> Finding:
    await run_sync(_select_one)
    return "ok", ""


async def _broker(timeout: float) -> Finding:
    url = get_settings().broker.url
    if url is None:
        return "ok", "in-process"
    await _ping(url, timeout)
    return "ok", "redis"


def _queue(alias: str) -> Probe:
    async def probe(timeout: float) -> Finding:
        backend = queues[alias]
        if isinstance(backend, MemoryBackend):
            return "ok", "in-process"
        # Imported only if a Redis backend was built: the core installs no Redis client.
        redis_backends = sys.modules.get("modalkit_django.queues.redis")
        if redis_backends is not None and isinstance(backend, redis_backends.RedisBackend):
            await _ping(backend.url, timeout)
            return "ok", "redis"
        return "skipped", f"not checked: {type(backend).__name__} can only be checked by sending"

    return probe


async def _inference(timeout: float) -> Finding:
    backend = get_inference_backend()
    if not isinstance(backend, ModalBackend):
        return "skipped", f"not checked: {type(backend).__name__} is not on Modal"
    # modal takes about a second to import: not on the event loop.
    modal: Any = await asyncio.to_thread(importlib.import_module, "modal")
    service = modal.Cls.from_name(backend.app_name, backend.class_name, environment_name=backend.environment_name)
    await service.hydrate.aio()
    return "ok", f"{backend.app_name}/{backend.class_name} is deployed"


async def _ping(url: str, timeout: float) -> None:
    """``PING`` the Redis server at ``url`` on a connection of its own, then close it."""
    # Here, not at the top: a Redis URL is configured only with the redis extra installed.
    from redis.asyncio import ConnectionPool, Redis
    from redis.asyncio.sentinel import SentinelConnectionPool

    from ..broker.redis_stream import SENTINEL_SCHEME, sentinel_pool

    pool: ConnectionPool
    if url.startswith(SENTINEL_SCHEME):
        pool = sentinel_pool(url)
        client = Redis(connection_pool=pool)
    elif url.startswith(REDIS_SCHEMES):
        client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        pool = client.connection_pool
    else:
        raise ValueError(f"not a Redis URL: {url}")
    try:
        await client.ping()
    finally:
        await client.aclose()
        await pool.disconnect()
        if isinstance(pool, SentinelConnectionPool):
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()
