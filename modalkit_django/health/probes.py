"""Readiness checks: can this process serve, and can it reach what a job needs?

:func:`acheck` runs every check concurrently, each bounded by ``timeout`` seconds. Three
are *required*: without them nothing works, so the process is not ready (``/ready``
answers 503). The others only *degrade* the service: submits still answer 202 and the
jobs wait in the database, so they are reported without taking the process out of
rotation (``/ready?strict=1`` counts them too).

``database`` (required)
    ``SELECT 1`` on the default database, on one of the API's database threads.
``migrations`` (required)
    Every migration on disk is applied to the default database (without them every submit
    fails). Once they all are, this process does not look again.
``configuration`` (required)
    This app's system checks (``manage.py check --tag modalkit``, which a worker also runs
    before it starts), once per process: an error fails it, naming the check's id;
    warnings are listed.
``broker``
    A connection to ``MODALKIT["BROKER"]["URL"]``: Redis ``PING`` (Sentinel included),
    RabbitMQ's connection handshake, NATS's JetStream account info; the detail names the
    broker. The in-process broker is this process, so it is ``ok``.
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
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from django.core import checks as system_checks
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations.executor import MigrationExecutor
from django.utils.module_loading import import_string

from ..api.threads import run_sync
from ..broker import REDIS_SCHEMES, transport_for, url_forms
from ..checks import CHECK_TAG, one_line
from ..clients import get_inference_backend
from ..clients.modal import ModalBackend
from ..conf import get_settings
from ..queues import queues
from ..queues.memory import MemoryBackend
from ..redaction import redact_text

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "REQUIRED",
    "Check",
    "Report",
    "acheck",
    "check",
    "configuration_problems",
    "forget",
    "unapplied_migrations",
]

DEFAULT_TIMEOUT_SECONDS = 2.0
# Without these the process cannot serve: the others only degrade the service.
REQUIRED = ("database", "migrations", "configuration")
# Migrations named in a report at most; the count says how many more.
MIGRATIONS_NAMED = 3

Status = Literal["ok", "error", "skipped"]
# What a probe found: its status, and a word on it ("in-process", why it was skipped, or
# for an "error", what is wrong).
Finding = tuple[Status, str]
Probe = Callable[[float], Awaitable[Finding]]


@dataclass(frozen=True)
class Check:
    """One check's outcome. ``error`` is set when ``status`` is ``"error"``; ``required``:
    the process cannot serve while it fails."""

    name: str
    status: Status
    duration_ms: float
    required: bool = False
    detail: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Report:
    checks: list[Check]

    @property
    def failed(self) -> list[str]:
        """Every check that failed."""
        return [check.name for check in self.checks if check.status == "error"]

    @property
    def blocking(self) -> list[str]:
        """The required checks that failed: while there is one, the process cannot serve."""
        return [check.name for check in self.checks if check.status == "error" and check.required]

    @property
    def ready(self) -> bool:
        """No required check failed (the others may have: degraded, but serving)."""
        return not self.blocking

    @property
    def ok(self) -> bool:
        """No check failed at all (skipped ones do not count against it): the strict view."""
        return not self.failed

    @property
    def status(self) -> Literal["ok", "degraded", "error"]:
        return "error" if self.blocking else "degraded" if self.failed else "ok"

    def passes(self, *, strict: bool = False) -> bool:
        """Ready, or with ``strict`` every check passed."""
        return self.ok if strict else self.ready

    def summary(self) -> str:
        """One line: ``Ready.``, ``Ready, degraded: broker failed.``, ``Not ready: migrations failed.``"""
        if not self.ready:
            return f"Not ready: {', '.join(self.blocking)} failed."
        if self.failed:
            return f"Ready, degraded: {', '.join(self.failed)} failed."
        return "Ready."

    def as_dict(self) -> dict[str, Any]:
        checks = {check.name: _fields(check) for check in self.checks}
        return {"status": self.status, "checks": checks}


def _fields(check: Check) -> dict[str, Any]:
    return {key: value for key, value in asdict(check).items() if key != "name"}


async def acheck(*, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> Report:
    """Run every check concurrently, each for at most ``timeout`` seconds."""
    probes: list[tuple[str, Probe]] = [
        ("database", _database),
        ("migrations", _migrations),
        ("configuration", _configuration),
        ("broker", _broker),
    ]
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
        status, detail, error = "error", "", f"{type(exc).__name__}: {exc}"
    if status == "error" and error is None:  # the probe said what is wrong
        detail, error = "", detail
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    return Check(
        name=name,
        status=status,
        duration_ms=duration_ms,
        required=name in REQUIRED,
        detail=redact_text(detail),
        error=None if error is None else redact_text(error)[:1000],
    )


def _raise(exc: Exception) -> Probe:
    async def probe(timeout: float) -> Finding:
        raise exc

    return probe


# --- What a process keeps ------------------------------------------------------------------
#
# The configuration is checked once per process, and the migrations until they are all
# applied: neither changes under a running process (a new release is a new process).
# forget() is connected to ``setting_changed`` (override_settings in tests).

_lock = threading.Lock()
_configuration_problems: tuple[list[str], list[str]] | None = None
_migrated: set[tuple[Any, ...]] = set()


def forget(**kwargs: Any) -> None:
    """Check the configuration and the migrations again on the next probe."""
    global _configuration_problems
    with _lock:
        _configuration_problems = None
        _migrated.clear()


def configuration_problems() -> tuple[list[str], list[str]]:
    """This app's system checks' errors and warnings, one line each (those silenced by
    ``SILENCED_SYSTEM_CHECKS`` left out). Run once per process: the configuration they
    read does not change under it."""
    global _configuration_problems
    with _lock:
        if _configuration_problems is not None:
            return _configuration_problems
    # Only this app's: Django's own model checks may query a database (SQLite's JSON support).
    found = system_checks.run_checks(tags=[CHECK_TAG])
    messages = [message for message in found if not message.is_silenced()]
    errors = [one_line(message) for message in messages if message.is_serious()]
    warnings = [one_line(message) for message in messages if not message.is_serious()]
    with _lock:
        _configuration_problems = (errors, warnings)
    return errors, warnings


def unapplied_migrations(connection: BaseDatabaseWrapper | None = None) -> list[str]:
    """The migrations on disk not applied to the database of ``connection`` (the default
    one's if ``None``), in the order ``migrate`` would apply them (``app_label.name``).

    A migration marked ``after_deploy = True`` is left out: it removes what the previous
    release still uses, so the new processes run, and answer ready, before it is applied."""
    executor = MigrationExecutor(connection or connections[DEFAULT_DB_ALIAS])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return [
        f"{migration.app_label}.{migration.name}"
        for migration, _ in plan
        if not getattr(migration, "after_deploy", False)
    ]


def _database_key(alias: str) -> tuple[Any, ...]:
    settings = connections.settings[alias]
    return (alias, settings.get("ENGINE"), settings.get("NAME"), settings.get("HOST"), settings.get("PORT"))


def _migration_state() -> list[str]:
    key = _database_key(DEFAULT_DB_ALIAS)
    if key in _migrated:
        return []
    unapplied = unapplied_migrations()
    if not unapplied:
        with _lock:
            _migrated.add(key)
    return unapplied


# --- The probes ----------------------------------------------------------------------------


def _select_one() -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _database(timeout: float) -> Finding:
    await run_sync(_select_one)
    return "ok", ""


async def _migrations(timeout: float) -> Finding:
    if _database_key(DEFAULT_DB_ALIAS) in _migrated:
        return "ok", "all applied"
    try:
        unapplied = await run_sync(_migration_state)
    except DatabaseError:  # the database check says why
        return "skipped", "not checked: the database did not answer"
    if not unapplied:
        return "ok", "all applied"
    named = ", ".join(unapplied[:MIGRATIONS_NAMED])
    more = f" and {len(unapplied) - MIGRATIONS_NAMED} more" if len(unapplied) > MIGRATIONS_NAMED else ""
    count = f"{len(unapplied)} migration{'s' if len(unapplied) != 1 else ''}"
    return "error", f"{count} not applied ({named}{more}): run `manage.py migrate`"


async def _configuration(timeout: float) -> Finding:
    # In a thread: the first run imports backends and URLconfs. Abandoned at the timeout, it
    # still finishes, and the next probe has its answer.
    errors, warnings = await asyncio.to_thread(configuration_problems)
    if errors:
        return "error", " | ".join(errors)
    return "ok", f"warnings: {' | '.join(warnings)}" if warnings else ""


async def _broker(timeout: float) -> Finding:
    url = get_settings().broker.url
    if url is None:
        return "ok", "in-process"
    transport = transport_for(url)
    if transport is None:
        raise ValueError(f"not a {url_forms()} URL: {url}")
    # Imported only for the broker chosen: its extra may be the only one installed.
    ping: Callable[[str, float], Awaitable[None]] = import_string(transport.ping)
    await ping(url, timeout)
    return "ok", transport.name


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
    if not url.startswith(REDIS_SCHEMES):
        raise ValueError(f"not a Redis URL: {url}")
    # Here, not at the top: a Redis URL is configured only with the redis extra installed.
    from ..broker.redis_stream import ping

    await ping(url, timeout)
