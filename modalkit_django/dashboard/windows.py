"""The dashboard's time windows, and what is measured within one: counts, throughput per
bucket and latency percentiles (computed by :mod:`.postgres` in SQL, by :mod:`.portable`
in Python)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["WINDOWS", "Bucket", "Latency", "Window", "WindowStats", "latency", "nested", "percentile"]


@dataclass(frozen=True)
class Window:
    name: str
    label: str
    span: dt.timedelta
    bucket: dt.timedelta

    @property
    def buckets(self) -> int:
        return self.span // self.bucket

    def start(self, now: dt.datetime) -> dt.datetime:
        """The first bucket's start: buckets fall on round times, the last one is the current one."""
        step = self.bucket.total_seconds()
        current = dt.datetime.fromtimestamp(now.timestamp() // step * step, tz=dt.UTC)
        return current - self.bucket * (self.buckets - 1)


WINDOWS = {
    "hour": Window("hour", "last hour", dt.timedelta(hours=1), dt.timedelta(minutes=5)),
    "day": Window("day", "last day", dt.timedelta(days=1), dt.timedelta(hours=1)),
}


@dataclass(frozen=True)
class Latency:
    """Median and 95th percentile, in seconds (None: nothing measured)."""

    p50: float | None = None
    p95: float | None = None


@dataclass(frozen=True)
class Bucket:
    start: dt.datetime
    finished: int
    failed: int
    queue_wait: Latency
    inference: Latency
    delivery: Latency


@dataclass(frozen=True)
class WindowStats:
    """What happened within a window: jobs that finished in it, deliveries created in it."""

    jobs: dict[str, dict[str, int]]  # model → status → count
    deliveries: dict[str, dict[str, int]]  # backend alias → status → count
    buckets: list[Bucket]
    queue_wait: Latency
    inference: Latency
    delivery: Latency


def latency(values: Iterable[float | None]) -> Latency:
    ranked = sorted(value for value in values if value is not None)
    return Latency(percentile(ranked, 0.5), percentile(ranked, 0.95))


def percentile(ranked: Sequence[float], fraction: float) -> float | None:
    """PostgreSQL's ``percentile_cont``: linear interpolation between the closest ranks."""
    if not ranked:
        return None
    position = (len(ranked) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ranked) - 1)
    return ranked[low] + (ranked[high] - ranked[low]) * (position - low)


def nested(rows: Iterable[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    """``(outer, inner, count)`` rows as ``{outer: {inner: count}}``."""
    result: dict[str, dict[str, int]] = {}
    for outer, inner, count in rows:
        result.setdefault(outer, {})[inner] = count
    return result
