"""Does history slow the hot path? The same measurements on an empty database and on one
holding ``--history`` finished jobs and their deliveries, in one run.

    .venv/bin/python bench/history.py --history 2000000    # make bench-history

On a database of its own (``BENCH_HISTORY_DATABASE_URL``, default
``modalkit_bench_history``, made afresh), each phase measures:

- **submits**: ``--submits`` ``POST /api/async/predict`` from ``--clients`` keep-alive
  clients against the demo project under uvicorn (2 processes), no worker running;
  requests per second, p50 and p99;
- **claim**: the claim statement (``Job.objects.claim``, 100 jobs) against that backlog,
  in a transaction rolled back each time; median and p99 of ``--claims`` claims;
- **drain**: two worker processes drain the backlog, each result sent to a Redis list;
  jobs per second from the first result on the list to the last;
- **admin**: the jobs and deliveries changelists (unfiltered and by status) and a job's
  page, through ``django.test.Client`` logged in as a superuser; median of ``--runs``.

Between the phases, ``--history`` finished jobs (succeeded, one in twenty failed, spread
over the last ``--days`` days) and one sent delivery each are inserted server-side
(``INSERT … SELECT generate_series``), then ``VACUUM (ANALYZE)``, as autovacuum leaves a
settled table. The ratios (history ÷ empty) are printed last; the load average beside
them, since this machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATABASE = os.environ.get("BENCH_HISTORY_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/modalkit_bench_history")
os.environ["BENCH_DATABASE_URL"] = DATABASE
os.environ["DATABASE_URL"] = DATABASE
os.environ.setdefault("BENCH_QUEUE", f"bench-history-{uuid.uuid4().hex[:6]}")
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"

from bench.submit import drive, prepare, request_bytes, serve  # noqa: E402
from bench.submit import stop as stop_server  # noqa: E402
from bench.throughput import REDIS_URL, RESULTS_KEY, start_worker, stop  # noqa: E402

RESULTS = RESULTS_KEY  # the Redis list bench/settings.py sends results to
WARM_UP = 300
# The server and `prepare` run the demo project as bench/submit.py serves it; this process
# and the workers, with bench/settings.py (results to the Redis list RESULTS).
SERVER_ENV = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.serve_settings"}

SEED_HISTORY = """
INSERT INTO modalkit_django_job (
    id, model_name, status, priority, message, meta, success_queue, failure_queue, result, error,
    attempts, runs, reruns, api_key_prefix, created_at, queued_at, started_at, finished_at,
    progress_message, output_count, idempotency_key, request_fingerprint
)
SELECT
    gen_random_uuid(), 'sentiment',
    CASE WHEN g %% 20 = 0 THEN 'failed' ELSE 'succeeded' END,
    1,
    jsonb_build_object('text', 'row ' || g), '{}'::jsonb, 'bench_results', '',
    CASE WHEN g %% 20 = 0 THEN NULL
         ELSE '{"status": "success", "sentiment": "positive", "confidence": 0.9}'::jsonb END,
    CASE WHEN g %% 20 = 0 THEN '{"type": "InferenceError", "message": "out of memory"}'::jsonb END,
    1, 1, 0, '',
    now() - make_interval(secs => %(spacing)s * g + 2),
    now() - make_interval(secs => %(spacing)s * g + 2),
    now() - make_interval(secs => %(spacing)s * g + 1),
    now() - make_interval(secs => %(spacing)s * g),
    '', 0, '', ''
FROM generate_series(1, %(rows)s) AS g
"""

SEED_DELIVERIES = """
INSERT INTO modalkit_django_queuedelivery (
    id, job_id, route, queue_name, backend, message_id, payload, status, attempts, attempts_since,
    last_error, next_attempt_at, sent_at, external_id, created_at
)
SELECT
    gen_random_uuid(), j.id, 'success', j.success_queue, 'redis', j.id || ':success',
    jsonb_build_object('job_id', j.id, 'status', 'success'), 'sent', 1, j.finished_at,
    '', NULL, j.finished_at, '', j.finished_at
FROM modalkit_django_job AS j
WHERE j.status = 'succeeded'
  AND NOT EXISTS (SELECT 1 FROM modalkit_django_queuedelivery AS d WHERE d.job_id = j.id)
"""


def quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def submits(port: int, key: str, clients: int, total: int) -> dict[str, float]:
    body = {"message": {"text": "I love this film"}, "success_queue": "bench_results"}
    raw = request_bytes("/api/async/predict", body, key)
    seconds, latencies, ok, errors = asyncio.run(drive(port, raw, clients, total))
    if errors or ok != total:
        raise RuntimeError(f"{errors} of {total} submits failed")
    return {
        "submits_per_s": round(total / seconds),
        "submit_p50_ms": round(quantile(latencies, 50) * 1000, 1),
        "submit_p99_ms": round(quantile(latencies, 99) * 1000, 1),
    }


def claims(count: int) -> dict[str, float]:
    from django.db import transaction

    from modalkit_django.models import Job

    times = []
    for _ in range(count + 1):
        started = time.perf_counter()
        with transaction.atomic():
            claimed = Job.objects.claim(limit=100, lease_seconds=30)
            transaction.set_rollback(True)
        times.append((time.perf_counter() - started) * 1000)
        assert len(claimed) == 100, f"claimed {len(claimed)} of a backlog of at least 100"
    times = times[1:]  # the first fills the connection's caches
    return {"claim_median_ms": round(statistics.median(times), 2), "claim_p99_ms": round(quantile(times, 99), 2)}


def drain(total: int, processes: int) -> dict[str, float]:
    import redis

    results = redis.Redis.from_url(REDIS_URL)
    env = {**os.environ, "INFERENCE": "local"}
    command = [sys.executable, "manage.py", "taskiq", "worker", "--workers", str(processes), "--log-level", "WARNING"]
    began = time.monotonic()
    first = None
    worker = start_worker(command, env)
    try:
        # Timed from the first result to the last: the workers' start-up is not the drain.
        while (sent := results.llen(RESULTS)) < total:
            if first is None and sent:
                first = (time.monotonic(), sent)
            if worker.poll() is not None:
                raise RuntimeError(worker.stderr.read().decode() if worker.stderr else "worker died")
            if time.monotonic() - began > 900:
                raise TimeoutError(f"{sent} of {total} results in 900 s")
            time.sleep(0.01)
        last = time.monotonic()
    finally:
        stop(worker)
    assert first is not None
    return {"drain_per_s": round((total - first[1]) / (last - first[0]))}


def admin_pages(runs: int) -> dict[str, float]:
    from django.contrib.auth import get_user_model
    from django.test import Client

    from modalkit_django.models import Job

    user_model = get_user_model()
    admin = user_model.objects.filter(username="bench-history").first() or user_model.objects.create_superuser(
        "bench-history", "bench@example.com", "bench"
    )
    client = Client(HTTP_HOST="localhost")
    client.force_login(admin)
    jobs, deliveries = "/admin/modalkit_django/job/", "/admin/modalkit_django/queuedelivery/"
    job = Job.objects.order_by("-created_at").values_list("id", flat=True).first()
    pages = {
        "jobs": (jobs, {}),
        "jobs failed": (jobs, {"status__exact": "failed"}),
        "job page": (f"{jobs}{job}/change/", {}),
        "deliveries": (deliveries, {}),
        "deliveries sent": (deliveries, {"status__exact": "sent"}),
    }
    timings = {}
    for name, (url, query) in pages.items():
        times = []
        for _ in range(runs + 1):
            started = time.perf_counter()
            response = client.get(url, query)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (name, response.status_code)
        timings[f"admin {name} ms"] = round(statistics.median(times[1:]), 1)
    return timings


def phase(args: argparse.Namespace, key: str) -> dict[str, float]:
    import redis
    from django.db import connection

    redis.Redis.from_url(REDIS_URL).delete(RESULTS)
    server = serve("uvicorn", "project.urls", args.port, 2, SERVER_ENV)
    try:
        submits(args.port, key, 8, WARM_UP)  # both processes warm; these jobs are drained too
        figures = submits(args.port, key, args.clients, args.submits)
    finally:
        stop_server(server)
    figures.update(claims(args.claims))
    figures.update(admin_pages(args.runs))
    connection.close()
    figures.update(drain(WARM_UP + args.submits, args.processes))
    figures["load_average"] = round(os.getloadavg()[0], 1)
    return figures


def add_history(rows: int, days: float) -> float:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(SEED_HISTORY, {"rows": rows, "spacing": days * 86400 / rows})
        cursor.execute(SEED_DELIVERIES)
        cursor.execute("VACUUM (ANALYZE) modalkit_django_job")
        cursor.execute("VACUUM (ANALYZE) modalkit_django_queuedelivery")
        cursor.execute(
            "SELECT pg_total_relation_size('modalkit_django_job') "
            "+ pg_total_relation_size('modalkit_django_queuedelivery')"
        )
        size = cursor.fetchone()[0]
    print(f"history: {rows:,} finished jobs in {time.perf_counter() - started:.0f} s, {size / rows:,.0f} bytes each")
    return size / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=2_000_000, help="finished jobs added between the phases")
    parser.add_argument("--days", type=float, default=30, help="the history's span")
    parser.add_argument("--submits", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--runs", type=int, default=7, help="requests of each admin page")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--port", type=int, default=18300)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "history.json")
    args = parser.parse_args()
    key = prepare(SERVER_ENV, DATABASE)
    import django

    django.setup()
    empty = phase(args, key)
    print("empty:  ", json.dumps(empty), flush=True)
    bytes_per_job = add_history(args.history, args.days)
    full = phase(args, key)
    print("history:", json.dumps(full), flush=True)
    ratios = {name: round(full[name] / empty[name], 2) for name in empty if name != "load_average" and empty[name]}
    print("ratios (history / empty):", json.dumps(ratios))
    result = {"history": args.history, "bytes_per_finished_job": round(bytes_per_job), "empty": empty,
              "with_history": full, "ratios": ratios}  # fmt: skip
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
