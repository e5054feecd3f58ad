"""The dashboard's numbers, in six statements whatever the row count.

Each statement is bounded by an index: the live states (queued, running) through the status
index, finished jobs through the partial index on ``finished_at``, deliveries through their
status and creation-time indexes. Nothing reads the whole job table. PostgreSQL counts and
ranks a window's rows in SQL (:mod:`.postgres`); other databases, SQLite for the embedded
demo, bring them over and do it in Python (:mod:`.portable`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models import Count, Min, Q
from django.db.models.functions import Now
from django.utils import timezone

from ..conf import get_settings
from ..models import Job, JobStatus, QueueDelivery, WorkerHeartbeat
from . import portable, postgres
from .windows import WINDOWS, Bucket, Latency, Window, WindowStats

__all__ = [
    "SCHEDULED",
    "STATUSES",
    "WINDOWS",
    "Bucket",
    "Dashboard",
    "DeadDelivery",
    "Latency",
    "Window",
    "dashboard_numbers",
]

# How many dead deliveries the page lists (the newest); all of them are counted.
DEAD_SHOWN = 10
LIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
# Queued but due later (a run_after, or a retry's backoff, ahead): not waiting for a worker
# yet, so counted apart from the queued jobs and left out of their age.
SCHEDULED = "scheduled"
STATUSES = (JobStatus.QUEUED.value, SCHEDULED, *JobStatus.values[1:])
# A batch's completion message is not a job's result: its latency is not a delivery's.
SENT_ROUTES = (QueueDelivery.Route.SUCCESS.value, QueueDelivery.Route.FAILURE.value)
ATTENTION = (QueueDelivery.Status.PENDING, QueueDelivery.Status.RETRYING, QueueDelivery.Status.DEAD)


@dataclass(frozen=True)
class DeadDelivery:
    id: Any
    job_id: Any
    backend: str
    queue_name: str
    last_error: str
    created_at: dt.datetime


@dataclass(frozen=True)
class Dashboard:
    window: Window
    now: dt.datetime
    since: dt.datetime
    # model → status → count: queued (due), scheduled and running now, finished statuses
    # within the window.
    jobs: dict[str, dict[str, int]]
    # Of the queued jobs due now: the scheduled ones have not begun to wait.
    oldest_queued_at: dt.datetime | None
    next_due_at: dt.datetime | None
    stats: WindowStats
    # Unsent and dead deliveries of all time, by status: what may need an operator.
    attention: dict[str, int]
    dead: list[DeadDelivery]
    live_workers: int

    @property
    def buckets(self) -> list[Bucket]:
        return self.stats.buckets

    @property
    def queue_wait(self) -> Latency:
        return self.stats.queue_wait

    @property
    def inference(self) -> Latency:
        return self.stats.inference

    @property
    def delivery(self) -> Latency:
        return self.stats.delivery

    @property
    def deliveries(self) -> dict[str, dict[str, int]]:
        """Backend alias → status → count, of the deliveries created within the window."""
        return self.stats.deliveries

    @property
    def jobs_by_status(self) -> dict[str, int]:
        return {status: sum(row.get(status, 0) for row in self.jobs.values()) for status in STATUSES}

    @property
    def jobs_by_model(self) -> dict[str, int]:
        return {model: sum(row.values()) for model, row in sorted(self.jobs.items())}

    @property
    def deliveries_by_backend(self) -> dict[str, int]:
        return {backend: sum(row.values()) for backend, row in sorted(self.deliveries.items())}

    @property
    def finished(self) -> int:
        return sum(bucket.finished for bucket in self.buckets)

    @property
    def oldest_queued_seconds(self) -> float | None:
        if self.oldest_queued_at is None:
            return None
        return max(0.0, (self.now - self.oldest_queued_at).total_seconds())


def dashboard_numbers(window: Window, *, now: dt.datetime | None = None, using: str = "default") -> Dashboard:
    """Everything the dashboard shows for ``window``, ending ``now``."""
    now = now or timezone.now()
    since = window.start(now)
    backend = postgres if connections[using].vendor == "postgresql" else portable
    stats = backend.window_stats(window, since, using=using, sent_routes=SENT_ROUTES)
    due = Q(queued_at__lte=Now())
    live = list(
        Job.objects.using(using)
        .order_by()
        .filter(status__in=LIVE)
        .values_list("model_name", "status")
        .annotate(
            n=Count("id"),
            due=Count("id", filter=due),
            oldest=Min("queued_at", filter=due),
            next_due=Min("queued_at", filter=Q(queued_at__gt=Now())),
        )
    )
    jobs = {model: dict(statuses) for model, statuses in stats.jobs.items()}
    for model, status, count, count_due, _, _ in live:
        counts = jobs.setdefault(model, {})
        if status != JobStatus.QUEUED:
            counts[status] = count
            continue
        for name, n in ((JobStatus.QUEUED.value, count_due), (SCHEDULED, count - count_due)):
            if n:
                counts[name] = n
    queued = [row for row in live if row[1] == JobStatus.QUEUED]
    deliveries = QueueDelivery.objects.using(using).order_by()
    attention = dict(deliveries.filter(status__in=ATTENTION).values_list("status").annotate(Count("id")))
    dead = deliveries.filter(status=QueueDelivery.Status.DEAD).order_by("-created_at")
    return Dashboard(
        window=window,
        now=now,
        since=since,
        jobs=jobs,
        oldest_queued_at=min((row[4] for row in queued if row[4] is not None), default=None),
        next_due_at=min((row[5] for row in queued if row[5] is not None), default=None),
        stats=stats,
        attention={status: attention.get(status, 0) for status in ATTENTION},
        dead=[
            DeadDelivery(*row)
            for row in dead.values_list("id", "job_id", "backend", "queue_name", "last_error", "created_at")[
                :DEAD_SHOWN
            ]
        ],
        live_workers=WorkerHeartbeat.objects.using(using)
        .live(stale_after=get_settings().worker.stale_after_seconds)
        .count(),
    )
