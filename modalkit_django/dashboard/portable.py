"""A window's numbers on any database (SQLite, for the embedded demo): the window's rows
are fetched with their durations already computed, then counted and ranked in Python.

Two statements, as on PostgreSQL (:mod:`.postgres`), but each brings its rows over: fine
for the demo's scale, capped at ``MAX_ROWS`` (the newest) so that a big SQLite database
still answers.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

from django.db.models import DateTimeField, F, Value
from django.db.models.functions import Floor

from ..models import FINISHED_JOB_STATUSES, Job, JobStatus, QueueDelivery
from .expressions import Seconds
from .windows import Bucket, Window, WindowStats, latency, nested

__all__ = ["MAX_ROWS", "window_stats"]

MAX_ROWS = 50_000


def window_stats(window: Window, since: dt.datetime, *, using: str, sent_routes: tuple[str, ...]) -> WindowStats:
    origin = Value(since, output_field=DateTimeField())
    step = window.bucket.total_seconds()
    jobs: list[tuple[Any, ...]] = list(
        Job.objects.using(using)
        .filter(status__in=FINISHED_JOB_STATUSES, finished_at__gte=since)
        .order_by("-finished_at")
        .annotate(
            bucket=Floor(Seconds(F("finished_at"), origin) / step),
            wait=Seconds(F("started_at"), F("queued_at")),
            run=Seconds(F("finished_at"), F("started_at")),
        )
        .values_list("model_name", "status", "bucket", "wait", "run")[:MAX_ROWS]
    )
    deliveries: list[tuple[Any, ...]] = list(
        QueueDelivery.objects.using(using)
        .filter(created_at__gte=since)
        .order_by("-created_at")
        .annotate(bucket=Floor(Seconds(F("created_at"), origin) / step), took=Seconds(F("sent_at"), F("created_at")))
        .values_list("backend", "status", "bucket", "took", "route")[:MAX_ROWS]
    )
    sent = [row for row in deliveries if row[1] == QueueDelivery.Status.SENT and row[4] in sent_routes]
    buckets = []
    for index in range(window.buckets):
        mine = [row for row in jobs if int(row[2]) == index]
        buckets.append(
            Bucket(
                start=since + window.bucket * index,
                finished=len(mine),
                failed=sum(1 for row in mine if row[1] == JobStatus.FAILED),
                queue_wait=latency(row[3] for row in mine),
                inference=latency(row[4] for row in mine),
                delivery=latency(row[3] for row in sent if int(row[2]) == index),
            )
        )
    return WindowStats(
        jobs=_counts(jobs),
        deliveries=_counts(deliveries),
        buckets=buckets,
        queue_wait=latency(row[3] for row in jobs),
        inference=latency(row[4] for row in jobs),
        delivery=latency(row[3] for row in sent),
    )


def _counts(rows: list[tuple[Any, ...]]) -> dict[str, dict[str, int]]:
    return nested((outer, inner, count) for (outer, inner), count in Counter(row[:2] for row in rows).items())
