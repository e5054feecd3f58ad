"""The admin's jobs dashboard at scale: its numbers and its whole page, timed at a million jobs.

    .venv/bin/python bench/dashboard_scale.py
    BENCH_DASHBOARD_DATABASE_URL=postgres://postgres@127.0.0.1:5432/modalkit_bench_admin \\
        .venv/bin/python bench/dashboard_scale.py   # the admin bench's database, as seeded there

Seeds a database of its own (``BENCH_DASHBOARD_DATABASE_URL``, default
``postgres://postgres@127.0.0.1:5432/modalkit_bench_dashboard``) when its job table is
empty: ``--rows`` jobs (a million) finished over the last week, about 6,000 an hour, with a
spread of queue waits and inference times, and one delivery per finished job on three
backends (some dead, retrying, pending). One ``INSERT … SELECT generate_series`` statement,
then ``ANALYZE``. Then it prints the median of ``--runs`` for: ``dashboard_numbers()`` for
each window with its statement count, and the page through ``django.test.Client`` as a
superuser (middleware, admin, template, charts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/modalkit_bench_dashboard"
ROWS = 1_000_000
WEEK_SECONDS = 7 * 24 * 3600

SEED = """
WITH rows AS (
    SELECT g,
        CASE WHEN g %% 500 = 0 THEN 'queued' WHEN g %% 1000 = 1 THEN 'running' WHEN g %% 20 = 2 THEN 'failed'
             WHEN g %% 200 = 3 THEN 'canceled' WHEN g %% 500 = 4 THEN 'expired' ELSE 'succeeded' END AS status,
        now() - make_interval(secs => g * %(spacing)s::float8) AS finished
    FROM generate_series(1, %(rows)s) AS g
), jobs AS (
    INSERT INTO modalkit_django_job (
        id, model_name, status, priority, message, meta, success_queue, failure_queue, result, attempts, runs,
        reruns, api_key_prefix, created_at, queued_at, started_at, finished_at, output_count, progress_message,
        idempotency_key, request_fingerprint
    )
    SELECT gen_random_uuid(),
        CASE WHEN g %% 10 = 0 THEN 'translation' WHEN g %% 10 = 1 THEN 'vision' ELSE 'sentiment' END,
        status, 1, jsonb_build_object('text', 'row ' || g), jsonb_build_object('n', g), 'results', 'failures',
        CASE WHEN status = 'succeeded' THEN '{"status": "success"}'::jsonb END, 1, 1, 0, '',
        finished - make_interval(secs => 0.2 + (g %% 89) / 20.0 + (g %% 97) / 10.0),
        finished - make_interval(secs => 0.2 + (g %% 89) / 20.0 + (g %% 97) / 10.0),
        CASE WHEN status NOT IN ('queued', 'expired', 'canceled')
             THEN finished - make_interval(secs => 0.2 + (g %% 89) / 20.0) END,
        CASE WHEN status NOT IN ('queued', 'running') THEN finished END,
        0, '', '', ''
    FROM rows
    RETURNING id, status, finished_at, (meta->>'n')::int AS n
)
INSERT INTO modalkit_django_queuedelivery (
    id, job_id, route, queue_name, backend, message_id, payload, status, attempts, attempts_since, last_error,
    next_attempt_at, sent_at, external_id, created_at
)
SELECT gen_random_uuid(), id,
    CASE WHEN status = 'succeeded' THEN 'success' ELSE 'failure' END,
    CASE WHEN status = 'succeeded' THEN 'results' ELSE 'failures' END,
    CASE WHEN n %% 3 = 0 THEN 'sqs' WHEN n %% 3 = 1 THEN 'webhook' ELSE 'default' END,
    id || ':' || status, '{}'::jsonb,
    CASE WHEN n %% 400 = 0 THEN 'dead' WHEN n %% 900 = 0 THEN 'retrying' WHEN n %% 3000 = 0 THEN 'pending'
         ELSE 'sent' END,
    1, finished_at, CASE WHEN n %% 400 = 0 THEN 'ConnectError: connection refused' ELSE '' END, NULL,
    CASE WHEN n %% 400 <> 0 AND n %% 900 <> 0 AND n %% 3000 <> 0
         THEN finished_at + make_interval(secs => 0.02 + (n %% 13) * 0.03) END,
    '', finished_at
FROM jobs WHERE status IN ('succeeded', 'failed')
"""


def setup(database_url: str) -> None:
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    os.environ.setdefault("BENCH_QUEUE", "modalkit-bench-dashboard")
    os.environ["BENCH_DATABASE_URL"] = database_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    import django

    django.setup()


def seed(rows: int) -> None:
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM modalkit_django_job)")
        if cursor.fetchone()[0]:
            cursor.execute("SELECT count(*) FROM modalkit_django_job")
            print(f"reusing the {cursor.fetchone()[0]:,} jobs already there")
            return
        started = time.perf_counter()
        cursor.execute(SEED, {"rows": rows, "spacing": WEEK_SECONDS / rows})
        cursor.execute("ANALYZE modalkit_django_job")
        cursor.execute("ANALYZE modalkit_django_queuedelivery")
        print(f"seeded {rows:,} jobs and their deliveries in {time.perf_counter() - started:.1f} s")


def median_ms(call: Callable[[], Any], runs: int) -> float:
    call()  # warm: templates compiled, the connection open, the pages cached
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    setup(os.environ.get("BENCH_DASHBOARD_DATABASE_URL", DEFAULT_URL))
    seed(args.rows)

    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from modalkit_django.dashboard.queries import WINDOWS, dashboard_numbers

    user_model = get_user_model()
    user = user_model.objects.filter(username="bench-dashboard").first() or user_model.objects.create_superuser(
        "bench-dashboard", "bench@example.com", "bench"
    )
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    print(f"\n{'what':<34} {'median ms':>10} {'queries':>8}")
    for name, window in WINDOWS.items():
        with CaptureQueriesContext(connection) as queries:
            numbers = dashboard_numbers(window)
        ms = median_ms(lambda window=window: dashboard_numbers(window), args.runs)
        print(f"{'numbers, ' + name:<34} {ms:>10.1f} {len(queries):>8}")
        page = f"/admin/modalkit_django/job/dashboard/?window={name}"
        assert client.get(page).status_code == 200
        ms = median_ms(lambda page=page: client.get(page), args.runs)
        print(f"{'page (whole request), ' + name:<34} {ms:>10.1f}")
        print(f"  {numbers.finished:,} finished in the window, p95 inference {numbers.inference.p95}")


if __name__ == "__main__":
    main()
