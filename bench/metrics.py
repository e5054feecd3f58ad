"""What metrics cost: a recording call on the job path, and one scrape at a million jobs.

    .venv/bin/python bench/metrics.py [--rows 1000000] [--runs 9]

Seeds (or reuses) a database of its own, ``BENCH_METRICS_DATABASE_URL`` (default
``postgres://postgres@127.0.0.1:5432/modalkit_bench_metrics``), with the dashboard
bench's rows (``bench/dashboard_scale.py``: ``--rows`` jobs over a week, 1 in 500 still
queued, deliveries on three backends, some dead or unsent). Then prints the median of
``--runs`` for: ``metrics.jobs_finished`` for a batch of 100 finished jobs, disabled (per
call) and enabled (per job); the database collector alone; and ``GET /metrics`` through
``django.test.Client``, with the statements it ran.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dashboard_scale import ROWS, median_ms, seed, setup

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/modalkit_bench_metrics"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    os.environ.setdefault("BENCH_QUEUE", "modalkit-bench-metrics")
    setup(os.environ.get("BENCH_METRICS_DATABASE_URL", DEFAULT_URL))
    seed(args.rows)

    from django.conf import settings
    from django.db import connection
    from django.test import Client, override_settings
    from django.test.utils import CaptureQueriesContext

    from modalkit_django import metrics
    from modalkit_django.metrics.collector import DatabaseCollector
    from modalkit_django.models import Job

    batch = list(Job.objects.filter(status=Job.Status.SUCCEEDED)[:100])

    def record() -> None:
        metrics.jobs_finished(batch, inference_seconds=0.1)

    # The job path's cost per job: one call per batch of 100, divided by 100.
    disabled_us = median_ms(record, args.runs) * 1000  # per call: it returns at once
    with override_settings(MODALKIT={**settings.MODALKIT, "METRICS": {"ENABLED": True}}, ALLOWED_HOSTS=["*"]):
        enabled_us = median_ms(record, args.runs) * 1000 / len(batch)
        collector_ms = median_ms(lambda: list(DatabaseCollector().collect()), args.runs)
        client = Client()
        scrape_ms = median_ms(lambda: client.get("/metrics"), args.runs)
        with CaptureQueriesContext(connection) as queries:
            response = client.get("/metrics")
    assert response.status_code == 200, response.content[:200]
    print(f"jobs: {Job.objects.count():,}, queued: {Job.objects.filter(status=Job.Status.QUEUED).count():,}")
    print(f"jobs_finished: disabled {disabled_us:.2f} µs a call; enabled {enabled_us:.1f} µs a job")
    print(f"database collector: {collector_ms:.1f} ms; GET /metrics: {scrape_ms:.1f} ms, {len(queries)} statements")


if __name__ == "__main__":
    main()
