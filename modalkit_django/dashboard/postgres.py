"""A window's numbers on PostgreSQL: two statements, each one pass over the window's rows.

``GROUPING SETS`` computes the counts by model and status, the per-bucket series and the
whole window's figures from a single scan; ``percentile_cont`` over an array of fractions
ranks each group once for both its p50 and its p95. Jobs are read through the partial
index on ``finished_at`` (finished statuses), deliveries through their ``created_at`` index.
A delivery's latency is ``sent_at - created_at``: it is created in the transaction that
finishes its job, and counting from its own creation stays right when the job is re-run
later (its ``finished_at`` then moves on, the old deliveries do not).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import connections

from ..models import FINISHED_JOB_STATUSES, Job, JobStatus, QueueDelivery
from .windows import Bucket, Latency, Window, WindowStats, nested

__all__ = ["window_stats"]

JOBS = """
SELECT model_name, status, bucket, GROUPING(model_name, status, bucket), count(*),
    count(*) FILTER (WHERE status = %(failed)s),
    percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY wait),
    percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY run)
FROM (
    SELECT model_name, status,
        floor(EXTRACT(EPOCH FROM (finished_at - %(since)s)) / %(step)s)::int AS bucket,
        EXTRACT(EPOCH FROM (started_at - queued_at))::double precision AS wait,
        EXTRACT(EPOCH FROM (finished_at - started_at))::double precision AS run
    FROM {jobs}
    WHERE status = ANY(%(finished)s) AND finished_at >= %(since)s
) AS finished
GROUP BY GROUPING SETS ((model_name, status), (bucket), ())
"""

DELIVERIES = """
SELECT backend, status, bucket, GROUPING(backend, status, bucket), count(*),
    percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY took)
FROM (
    SELECT backend, status,
        floor(EXTRACT(EPOCH FROM (created_at - %(since)s)) / %(step)s)::int AS bucket,
        CASE WHEN status = %(sent)s AND route = ANY(%(routes)s)
            THEN EXTRACT(EPOCH FROM (sent_at - created_at))::double precision END AS took
    FROM {deliveries}
    WHERE created_at >= %(since)s
) AS created
GROUP BY GROUPING SETS ((backend, status), (bucket), ())
"""

# GROUPING() of the three columns: 0b001 — the (outer, status) set; 0b110 — by bucket; 0b111 — all.
BY_KIND, BY_BUCKET, OVERALL = 0b001, 0b110, 0b111


def window_stats(window: Window, since: dt.datetime, *, using: str, sent_routes: tuple[str, ...]) -> WindowStats:
    connection = connections[using]
    params: dict[str, Any] = {
        "since": since,
        "step": window.bucket.total_seconds(),
        "failed": JobStatus.FAILED.value,
        "finished": [str(status) for status in FINISHED_JOB_STATUSES],
        "sent": QueueDelivery.Status.SENT.value,
        "routes": list(sent_routes),
    }
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(JOBS.format(jobs=quote(Job._meta.db_table)), params)
        jobs = cursor.fetchall()
        cursor.execute(DELIVERIES.format(deliveries=quote(QueueDelivery._meta.db_table)), params)
        deliveries = cursor.fetchall()
    job_buckets = {row[2]: row for row in jobs if row[3] == BY_BUCKET}
    sent_buckets = {row[2]: row for row in deliveries if row[3] == BY_BUCKET}
    [job_total] = [row for row in jobs if row[3] == OVERALL] or [None]
    [sent_total] = [row for row in deliveries if row[3] == OVERALL] or [None]
    buckets = []
    for index in range(window.buckets):
        job_row, sent_row = job_buckets.get(index), sent_buckets.get(index)
        buckets.append(
            Bucket(
                start=since + window.bucket * index,
                finished=job_row[4] if job_row else 0,
                failed=job_row[5] if job_row else 0,
                queue_wait=_latency(job_row, 6),
                inference=_latency(job_row, 7),
                delivery=_latency(sent_row, 5),
            )
        )
    return WindowStats(
        jobs=nested((row[0], row[1], row[4]) for row in jobs if row[3] == BY_KIND),
        deliveries=nested((row[0], row[1], row[4]) for row in deliveries if row[3] == BY_KIND),
        buckets=buckets,
        queue_wait=_latency(job_total, 6),
        inference=_latency(job_total, 7),
        delivery=_latency(sent_total, 5),
    )


def _latency(row: tuple[Any, ...] | None, column: int) -> Latency:
    # percentile_cont over an empty (all-NULL) group is NULL, not an array.
    if row is None or row[column] is None:
        return Latency()
    p50, p95 = row[column]
    return Latency(p50, p95)
