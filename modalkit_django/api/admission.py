"""What a request may submit: a body in UTF-8, the queues its key was granted, the key's limits.

Checked before a job is stored, and before ``POST /predict`` calls the model (a call
counts as a submit of one job). A refusal is an :class:`~ninja.errors.HttpError`: 400
for a body that is not UTF-8, 403 for a queue the key was not granted, 429 with
``Retry-After`` for a limit reached.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.cache import caches
from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.params import functions as param

from ..conf import get_settings
from ..models import Job
from ..models.keys import queue_allowed
from .auth import Caller
from .schemas import NO_NUL
from .threads import run_sync

__all__ = ["TooManyRequests", "admit", "idempotency_key_header", "refuse_unless_utf8"]


def idempotency_key_header(what: str) -> Any:
    """The ``Idempotency-Key`` header of a submit that queues ``what`` ("job", "batch")."""
    return param.Header(
        None,
        alias="Idempotency-Key",
        max_length=255,
        pattern=NO_NUL,
        description=f"Repeat a request safely: the same key and body return the first {what}.",
    )


def refuse_unless_utf8(request: HttpRequest) -> None:
    """Refuse a JSON body in UTF-16 or UTF-32: JSON between systems is UTF-8 (RFC 8259).

    Python's JSON parser guesses those encodings from the first bytes (a BOM, or the
    zeros of ASCII text), so such a body parses; a client sending it would be read
    rightly here and wrongly by the next system its message reaches. A UTF-8 BOM is
    ignored, as RFC 8259 allows.
    """
    if json.detect_encoding(request.body) not in {"utf-8", "utf-8-sig"}:
        raise HttpError(400, "The request body must be JSON in UTF-8 (RFC 8259), without a UTF-16 or UTF-32 encoding.")


class TooManyRequests(HttpError):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(429, message)
        self.retry_after = retry_after


async def admit(caller: Caller, queue_names: tuple[str, ...], *, jobs: int = 1) -> None:
    """Refuse the submit of ``jobs`` jobs (a batch submits many) unless ``caller`` may send
    to every one of ``queue_names`` and is within its rate limit and its cap on waiting jobs."""
    for name in queue_names:
        if not queue_allowed(name, caller.allowed_queues):
            # The name is the client's own (printed with repr: no control characters reach
            # anyone); which queues exist is not said.
            raise HttpError(
                403, f"This API key may not send results to the queue {name!r}; an administrator can grant it."
            )
    settings = get_settings().api
    per_minute = caller.rate_limit or settings.rate_limit_per_minute
    if per_minute:
        await _count_submit(caller, per_minute, settings.rate_limit_cache, jobs)
    cap = caller.max_queued_jobs or settings.max_queued_jobs
    if cap:
        waiting = await run_sync(_waiting_jobs, caller, cap)
        if waiting + jobs > cap:
            message = (
                f"This API key may have {cap} jobs waiting; {waiting} are, and this batch has {jobs}."
                if jobs > 1
                else f"This API key has {waiting} jobs waiting, its limit; retry when they have run."
            )
            raise TooManyRequests(message, 5)


async def _count_submit(caller: Caller, per_minute: int, cache_alias: str, jobs: int) -> None:
    """A fixed one-minute window per key, counted in a Django cache (shared across
    processes when the cache is, e.g. Redis)."""
    now = time.time()
    window = int(now // 60)
    key = f"modalkit:submits:{caller.key_prefix or caller.key_name}:{window}"
    cache = caches[cache_alias]
    await cache.aadd(key, 0, timeout=61)
    if await cache.aincr(key, jobs) > per_minute:
        retry_after = max(1, int((window + 1) * 60 - now) + 1)
        message = f"This API key may submit {per_minute} jobs a minute; retry in {retry_after} s."
        raise TooManyRequests(message, retry_after)


def _waiting_jobs(caller: Caller, cap: int) -> int:
    # Counted up to the cap only: a long backlog costs no more than a short one.
    waiting = Job.objects.filter(owner=caller.owner, api_key_prefix=caller.key_prefix, status=Job.Status.QUEUED)
    return waiting[:cap].count()
