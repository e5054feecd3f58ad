"""The admin at scale: 1,000,000 jobs and 1,000,000 deliveries, each page timed.

    .venv/bin/python bench/admin_scale.py            # make bench-admin

Seeds a database of its own (``BENCH_ADMIN_DATABASE_URL``, default
``postgres://postgres@127.0.0.1:5432/modalkit_bench_admin``), created if missing and
reused once seeded, with server-side ``INSERT … SELECT generate_series`` (one to three
minutes), then ``VACUUM (ANALYZE)``. Then it times, through ``django.test.Client``
logged in as a superuser (the whole Django stack: middleware, admin, templates,
PostgreSQL), ``--runs`` requests of each page and prints their median and fastest: the
job and delivery changelists unfiltered, with each filter and with a search, the detail
pages, the cancel confirmation page. Last, three bulk actions on ``--cancel`` rows, each
selected across pages as "Select all" does: cancel the newest jobs (queued again
first), re-run them, redeliver as many dead deliveries.

Wake-ups go to a waker that drops them (no worker runs here): what is timed is the
admin's own work, and the wake-ups are sent after the commit anyway.
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
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/modalkit_bench_admin"
ROWS = 1_000_000

# One job in 50 queued, one in 100 running; most succeeded. Statuses and queues rotate
# with the row number, so every filter value has rows all through the table's history.
SEED_JOBS = """
INSERT INTO modalkit_django_job (
    id, model_name, status, priority, batch_id, message, meta, success_queue, failure_queue,
    result, error, attempts, runs, reruns, owner_id, api_key_prefix, created_at, queued_at, started_at,
    finished_at, progress, progress_message, output_count, idempotency_key, request_fingerprint, run_after
)
SELECT
    gen_random_uuid(),
    CASE WHEN g %% 10 = 0 THEN 'translation' ELSE 'sentiment' END,
    CASE WHEN g %% 50 = 0 THEN 'queued' WHEN g %% 100 = 1 THEN 'running' WHEN g %% 20 = 2 THEN 'failed'
         WHEN g %% 200 = 3 THEN 'canceled' WHEN g %% 500 = 4 THEN 'expired' ELSE 'succeeded' END,
    CASE WHEN g %% 25 = 0 THEN 2 WHEN g %% 7 = 0 THEN 0 ELSE 1 END,
    NULL,
    jsonb_build_object('text', 'row ' || g),
    jsonb_build_object('n', g),
    'results-' || (g %% 20),
    'failures-' || (g %% 20),
    '{"status": "success", "sentiment": "positive", "confidence": 0.9}'::jsonb,
    -- Each claimed once; queued or running with a delivery: re-run once (its deliveries
    -- are the last run's).
    NULL, 1, 1, CASE WHEN g %% 50 = 0 OR g %% 100 = 1 THEN 1 ELSE 0 END, %(owner)s, '',
    now() - make_interval(secs => g * 3),
    -- One queued job in 100 scheduled a day ahead: due then (queued_at, as a run_after
    -- sets it), so the "scheduled" filter finds them among the queued.
    CASE WHEN g %% 5000 = 0 THEN now() + interval '1 day' ELSE now() - make_interval(secs => g * 3) END,
    now() - make_interval(secs => g * 3 - 1),
    now() - make_interval(secs => g * 3 - 2),
    CASE WHEN g %% 100 = 1 THEN (g %% 97) / 97.0 END,
    CASE WHEN g %% 100 = 1 THEN 'step ' || (g %% 97) ELSE '' END,
    0, '', '',
    CASE WHEN g %% 5000 = 0 THEN now() + interval '1 day' END
FROM generate_series(1, %(rows)s) AS g
"""

SEED_DELIVERIES = """
INSERT INTO modalkit_django_queuedelivery (
    id, job_id, route, queue_name, backend, message_id, payload, status, attempts, attempts_since,
    last_error, next_attempt_at, sent_at, external_id, created_at
)
SELECT
    gen_random_uuid(), j.id,
    CASE WHEN j.status = 'succeeded' THEN 'success' ELSE 'failure' END,
    CASE WHEN j.status = 'succeeded' THEN j.success_queue ELSE j.failure_queue END,
    CASE WHEN (j.meta->>'n')::int % 3 = 0 THEN 'redis' ELSE 'memory' END,
    j.id || ':' || CASE WHEN j.status = 'succeeded' THEN 'success' ELSE 'failure' END,
    jsonb_build_object('job_id', j.id, 'status', 'success'),
    CASE WHEN (j.meta->>'n')::int % 40 = 0 THEN 'dead' WHEN (j.meta->>'n')::int % 90 = 0 THEN 'retrying'
         WHEN (j.meta->>'n')::int % 300 = 0 THEN 'pending' ELSE 'sent' END,
    1, j.finished_at, '', NULL, j.finished_at, '', j.finished_at
FROM modalkit_django_job AS j
"""


def setup_django(database_url: str) -> None:
    os.environ.setdefault("BENCH_QUEUE", "modalkit-bench-admin")
    os.environ["BENCH_DATABASE_URL"] = database_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    import django

    django.setup()


def create_database(database_url: str) -> None:
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")


def seed(rows: int) -> None:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    user_model = get_user_model()
    admin = user_model.objects.filter(username="bench-admin").first() or user_model.objects.create_superuser(
        "bench-admin", "bench@example.com", "bench"
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM (SELECT 1 FROM modalkit_django_job LIMIT %s) AS s", [rows])
        if cursor.fetchone()[0] >= rows:
            print(f"reusing the {rows:,} seeded jobs")
            return
        started = time.perf_counter()
        # CASCADE: the jobs' partial outputs (modalkit_django_joboutput) go with them.
        cursor.execute("TRUNCATE modalkit_django_job, modalkit_django_queuedelivery CASCADE")
        cursor.execute(SEED_JOBS, {"rows": rows, "owner": admin.pk})
        print(f"seeded {rows:,} jobs in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        cursor.execute(SEED_DELIVERIES)
        print(f"seeded {rows:,} deliveries in {time.perf_counter() - started:.1f} s")
        # As autovacuum leaves a table that has settled: statistics, and the visibility map
        # that lets a count read an index alone.
        cursor.execute("VACUUM (ANALYZE) modalkit_django_job")
        cursor.execute("VACUUM (ANALYZE) modalkit_django_queuedelivery")


def timed_ms(request: Callable[[], Any], runs: int) -> tuple[float, float, int]:
    request()  # warm: templates compiled, caches and the connection filled
    times = []
    status = 0
    for _ in range(runs):
        started = time.perf_counter()
        response = request()
        times.append((time.perf_counter() - started) * 1000)
        status = response.status_code
    return statistics.median(times), min(times), status


def pages(client: Any, job_id: str, delivery_id: str, batch_id: str) -> dict[str, Callable[[], Any]]:
    from modalkit_django.models import Job

    jobs = "/admin/modalkit_django/job/"
    deliveries = "/admin/modalkit_django/queuedelivery/"
    queued = [str(pk) for pk in Job.objects.filter(status="queued").values_list("id", flat=True)[:100]]
    confirm = {"action": "cancel_jobs", "index": "0", "select_across": "1", "_selected_action": queued}
    return {
        "jobs: unfiltered": lambda: client.get(jobs),
        "jobs: status=queued": lambda: client.get(jobs, {"status__exact": "queued"}),
        "jobs: status=scheduled": lambda: client.get(jobs, {"status__exact": "scheduled"}),
        "jobs: status=expired (rare)": lambda: client.get(jobs, {"status__exact": "expired"}),
        "jobs: model=translation": lambda: client.get(jobs, {"model_name": "translation"}),
        "jobs: priority=high": lambda: client.get(jobs, {"priority__exact": "2"}),
        "jobs: owner=bench-admin": lambda: client.get(jobs, {"owner": "bench-admin"}),
        "jobs: owner=bench-rare (3 oldest jobs)": lambda: client.get(jobs, {"owner": "bench-rare"}),
        "jobs: batch=<uuid>": lambda: client.get(jobs, {"batch": batch_id}),
        "jobs: created today": lambda: client.get(jobs, {"created_at__gte": _today()}),
        "jobs: failed+translation (none match)": lambda: client.get(
            jobs, {"status__exact": "failed", "model_name": "translation"}
        ),
        "jobs: search job id": lambda: client.get(jobs, {"q": job_id}),
        "jobs: sorted oldest first": lambda: client.get(jobs, {"o": _column(jobs, "created")}),
        "jobs: page 50": lambda: client.get(jobs, {"p": "50"}),
        "job detail": lambda: client.get(f"{jobs}{job_id}/change/"),
        "jobs: cancel confirmation (all queued)": lambda: client.post(f"{jobs}?status__exact=queued", confirm),
        "jobs: cancel confirmation (all 1M jobs)": lambda: client.post(jobs, confirm),
        "deliveries: unfiltered": lambda: client.get(deliveries),
        "deliveries: status=dead": lambda: client.get(deliveries, {"status__exact": "dead"}),
        "deliveries: backend=redis": lambda: client.get(deliveries, {"backend": "redis"}),
        "deliveries: route=failure": lambda: client.get(deliveries, {"route__exact": "failure"}),
        "deliveries: queue=results-7": lambda: client.get(deliveries, {"queue_name": "results-7"}),
        "deliveries: search delivery id": lambda: client.get(deliveries, {"q": delivery_id}),
        "deliveries: search job id": lambda: client.get(deliveries, {"q": job_id}),
        "deliveries: search message id": lambda: client.get(deliveries, {"q": f"{job_id}:success"}),
        "delivery detail": lambda: client.get(f"{deliveries}{delivery_id}/change/"),
    }


def _column(url: str, name: str) -> str:
    """The changelist's ``o`` for ``name``, ascending: its index in list_display (0 is the checkbox)."""
    from django.urls import resolve

    model_admin = resolve(url).func.model_admin
    return str(["action_checkbox", *model_admin.list_display].index(name))


def _today() -> str:
    from django.utils import timezone

    # As the date filter's own "Today" link has it.
    return str(timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0))


def bulk_actions(client: Any, count: int) -> None:
    """Cancel the newest ``count`` jobs (queued again first), re-run them, then redeliver
    ``count`` dead deliveries: each selected across pages, as "Select all" does."""
    from django.db import connection

    from modalkit_django.models import Job, QueueDelivery

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE modalkit_django_job SET status = 'queued', finished_at = NULL, error = NULL, reruns = reruns + 1 "
            "WHERE id IN (SELECT id FROM modalkit_django_job ORDER BY created_at DESC LIMIT %s)",
            [count],
        )
    newest = Job.objects.order_by("-created_at")[count - 1].created_at
    jobs = Job.objects.filter(created_at__gte=newest)
    print()
    since = newest.isoformat()
    run_action(client, "job", "cancel_jobs", {"status__exact": "queued", "created_at__gte": since}, jobs)
    print(f"  {jobs.filter(status='canceled').count():,} of {count:,} jobs canceled")
    run_action(client, "job", "rerun_jobs", {"status__exact": "canceled", "created_at__gte": since}, jobs)
    print(f"  {jobs.filter(status='queued').count():,} of {count:,} jobs queued again")
    dead = QueueDelivery.objects.filter(status="dead").order_by("-created_at")
    oldest = dead[count - 1].created_at
    chosen = list(dead.filter(created_at__gte=oldest).values_list("pk", flat=True))
    filters = {"status__exact": "dead", "created_at__gte": oldest.isoformat()}
    run_action(client, "queuedelivery", "redeliver", filters, dead.filter(created_at__gte=oldest))
    redelivered = QueueDelivery.objects.filter(pk__in=chosen, status="pending", attempts=0)
    print(f"  {redelivered.count():,} of {len(chosen):,} dead deliveries pending again")
    redelivered.update(status="dead", attempts=1)  # dead again, for the next run


def run_action(client: Any, model: str, action: str, filters: dict[str, str], selection: Any) -> None:
    """POST the action on every row ``filters`` match, as after "Select all": the page's ids
    (``selection``, its first 50 rows) and ``select_across``."""
    from urllib.parse import urlencode

    url = f"/admin/modalkit_django/{model}/?{urlencode(filters)}"
    page = [str(pk) for pk in selection.order_by("-created_at").values_list("pk", flat=True)[:50]]
    data = {"action": action, "select_across": "1", "_selected_action": page, "post": "yes"}
    started = time.perf_counter()
    response = client.post(url, data)
    elapsed = time.perf_counter() - started
    where = ", ".join(f"{name}={value}" for name, value in filters.items())
    print(f"{action:<12} {elapsed:6.2f} s  HTTP {response.status_code}  ({where})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cancel", type=int, default=5000, help="queued jobs one bulk cancel selects (0: none)")
    args = parser.parse_args()
    database_url = os.environ.get("BENCH_ADMIN_DATABASE_URL", DEFAULT_URL)
    create_database(database_url)
    setup_django(database_url)
    seed(args.rows)

    from django.contrib.auth import get_user_model
    from django.test import Client

    from modalkit_django.jobs import wakeups
    from modalkit_django.models import Batch, Job, QueueDelivery

    wakeups.set_waker(wakeups.NullWaker())
    client = Client(HTTP_HOST="localhost")
    client.force_login(get_user_model().objects.get(username="bench-admin"))
    job = Job.objects.order_by("-created_at")[5000]
    delivery = QueueDelivery.objects.filter(job=job).first() or QueueDelivery.objects.order_by("-created_at")[0]
    batch = Batch.objects.create(model_name="sentiment", size=0)
    # An owner of 3 jobs, the oldest: the worst case for a list read newest first.
    rare, _ = get_user_model().objects.get_or_create(username="bench-rare")
    Job.objects.filter(pk__in=Job.objects.order_by("created_at").values("pk")[:3]).update(owner=rare)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\n{os.cpu_count()} cores, load average {load} (other work on the machine slows every page)")
    print(f"\n{'page':<42} {'median ms':>10} {'min ms':>8} {'HTTP':>5}")
    for name, request in pages(client, str(job.id), str(delivery.id), str(batch.id)).items():
        median, fastest, status = timed_ms(request, args.runs)
        print(f"{name:<42} {median:>10.1f} {fastest:>8.1f} {status:>5}")
    batch.delete()
    if args.cancel:
        bulk_actions(client, args.cancel)


if __name__ == "__main__":
    main()
