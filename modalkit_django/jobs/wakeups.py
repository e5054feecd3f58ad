"""How the job service wakes workers, without knowing the broker.

Services and the engine call :func:`get_waker` when jobs or deliveries become due; the
app installs the broker's waker when it is ready (``apps.py``), tests install their own.
A waker never raises and never blocks its caller on the broker. A wake-up only makes
work start sooner: idle workers look for runnable jobs and due deliveries at every poll
(``WORKER["POLL_INTERVAL_SECONDS"]``), so one that cannot be sent loses nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol

__all__ = ["NullWaker", "Waker", "get_waker", "set_waker"]

Ids = Sequence[uuid.UUID | str]


class Waker(Protocol):
    def wake_jobs(self, job_ids: Ids) -> None:
        """From synchronous code: have workers run these queued jobs. Returns at once."""

    async def awake_jobs(self, job_ids: Ids) -> None:
        """From the broker's event loop: the same, once the broker has the wake-ups."""

    def wake_deliveries(self, delivery_ids: Ids) -> None:
        """From synchronous code: have workers send these deliveries. Returns at once."""

    async def awake_deliveries(self, delivery_ids: Ids) -> None:
        """From the broker's event loop: the same, once the broker has them."""


class NullWaker:
    """Before the app is ready: nothing to wake; workers find the work at their next poll."""

    def wake_jobs(self, job_ids: Ids) -> None:
        return None

    async def awake_jobs(self, job_ids: Ids) -> None:
        return None

    def wake_deliveries(self, delivery_ids: Ids) -> None:
        return None

    async def awake_deliveries(self, delivery_ids: Ids) -> None:
        return None


_waker: Waker = NullWaker()


def get_waker() -> Waker:
    return _waker


def set_waker(waker: Waker) -> Waker:
    """Install ``waker``; returns the one it replaces (tests put it back)."""
    global _waker
    previous, _waker = _waker, waker
    return previous
