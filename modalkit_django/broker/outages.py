"""How every broker of its own rides out its server being away: backoff, and waiting.

A worker whose broker does not answer at start logs one line (:func:`log_away`), starts,
runs the jobs it finds in the database, and waits for the broker (:func:`wait_for`) before
it reads wake-ups; one more line says when it answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

__all__ = ["backoffs", "log_away", "wait_for"]


def backoffs(first: float = 0.1, longest: float = 5.0) -> Iterator[float]:
    """Seconds to wait before each attempt: ``first``, doubling up to ``longest``."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, longest)


def log_away(logger: logging.Logger, name: str, where: str, exc: BaseException) -> float:
    """Say once that ``name`` at ``where`` does not answer; returns since when."""
    logger.error(
        "%s at %s does not answer (%s); retrying in the background, and running the jobs in the database meanwhile",
        name,
        where,
        exc,
    )
    return time.monotonic()


async def wait_for(
    connect: Callable[[], Awaitable[None]],
    gone: tuple[type[BaseException], ...],
    *,
    logger: logging.Logger,
    name: str,
    where: str,
    since: float,
    on_failure: Callable[[], None] = lambda: None,
) -> None:
    """Until ``connect`` stops raising one of ``gone``, with backoff; then say so."""
    for delay in backoffs():
        try:
            await connect()
        except gone:
            on_failure()
            await asyncio.sleep(delay)
            continue
        logger.warning("%s at %s answers after %.1fs; reading wake-ups", name, where, time.monotonic() - since)
        return
