"""How long a high-priority job waits behind a flood of low-priority ones.

    .venv/bin/python bench/priority.py --low 10000

Queues ``--low`` low-priority jobs (their wake-ups in the Redis stream, as a batch submit
sends them), starts one worker process (local inference, the Redis stream broker, as
bench/throughput.py does), waits until it has run ``--warm`` of them, then submits one job
through ``modalkit_django.submit_job`` and reports its submit-to-finish latency beside the
mean batch time (claim to finish, per lease).

It runs twice: the job submitted as ``high`` (a worker claims the highest priority first,
whatever woke it: the job is in the next batch any worker claims), then as ``low`` (the
control: due last, it waits behind the whole flood). Also prints the plan of the claim
of one batch with the flood and a high job queued.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup() -> None:
    os.environ.setdefault("BENCH_MODALKIT_QUEUE", f"bench-priority-{uuid.uuid4().hex[:6]}")
    os.environ["BENCH_QUEUE"] = os.environ["BENCH_MODALKIT_QUEUE"]
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from bench.throughput import _create_database

    _create_database(connection.settings_dict)
    call_command("migrate", verbosity=0)


def fill(low: int) -> None:
    from django.db import connection
    from django.utils import timezone

    from modalkit_django import broker
    from modalkit_django.models import Job, QueueDelivery
    from modalkit_django.worker import tasks

    QueueDelivery.objects.all().delete()
    Job.objects.all().delete()
    now = timezone.now()
    # Due from the insert, by the database's clock (queued_at's default), as a submit's.
    jobs = Job.objects.bulk_create(
        Job(model_name="sentiment", message={"text": f"a good film {n}"}, success_queue="bench_results",
            priority=Job.Priority.LOW, created_at=now)
        for n in range(low)
    )  # fmt: skip

    async def wake() -> None:
        # The consumer group must exist before the messages, or the worker never sees them.
        await broker.get_broker().startup()
        # As a batch submit wakes workers: one run_jobs per WAKE_CHUNK jobs, a nudge each.
        await tasks.BrokerWaker().awake_jobs([job.id for job in jobs])

    broker.submit(wake()).result(60)
    connection.close()


def explain() -> str:
    """The plan of a worker's claim of one batch, the flood and a high job queued, rolled back."""
    from django.db import connection, transaction

    from modalkit_django.conf import get_settings
    from modalkit_django.models import Job
    from modalkit_django.models.sql import _claim_sql

    worker = get_settings().worker
    # A worker's fetch loop claims among every runnable job, not among ids.
    params = {"limit": worker.batch_size, "token": uuid.uuid4(), "lease": worker.lease_seconds}
    with transaction.atomic(), connection.cursor() as cursor:
        # As autovacuum would have by then: a freshly loaded table has no statistics.
        cursor.execute(f'ANALYZE "{Job._meta.db_table}"')
        cursor.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + _claim_sql(Job, among_ids=False), params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        transaction.set_rollback(True)
    return plan


def run(low: int, warm: int, priority: str) -> dict[str, Any]:
    from django.db.models import Count
    from django.utils import timezone

    import modalkit_django
    from bench.throughput import start_worker, stop
    from modalkit_django.models import Job

    fill(low)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.settings", "INFERENCE": "local"}
    worker = start_worker([sys.executable, "manage.py", "taskiq", "worker", "--workers", "1",
                           "--log-level", "WARNING"], env)  # fmt: skip
    try:
        while Job.objects.filter(status="succeeded").count() < warm:
            if worker.poll() is not None:
                raise RuntimeError(worker.stderr.read().decode() if worker.stderr else "worker died")
            time.sleep(0.05)
        waiting = Job.objects.filter(status="queued").count()
        job = modalkit_django.submit_job(
            message={"text": "an urgent film"},
            success_queue="bench_results",
            schedule=modalkit_django.Schedule(priority=priority),
        )
        deadline = time.monotonic() + 600
        while Job.objects.exclude(status="succeeded").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("jobs not done in 600 s")
            time.sleep(0.1)
    finally:
        stop(worker)
    job.refresh_from_db()
    assert job.finished_at is not None
    latency = (job.finished_at - job.created_at).total_seconds()
    batches = list(
        Job.objects.exclude(id=job.id).values("lease_token", "started_at", "finished_at").annotate(n=Count("id"))
    )
    batch_times = [(batch["finished_at"] - batch["started_at"]).total_seconds() for batch in batches]
    last = Job.objects.latest("finished_at").finished_at
    return {
        "priority": priority,
        "low_jobs_waiting_at_submit": waiting,
        "low_jobs_finished_after_it": Job.objects.filter(priority=Job.Priority.LOW, finished_at__gt=job.finished_at)
        .exclude(id=job.id)
        .count(),
        "latency_s": round(latency, 3),
        "batches": len(batches),
        "mean_batch_jobs": round(statistics.mean(batch["n"] for batch in batches), 1),
        "mean_batch_s": round(statistics.mean(batch_times), 3),
        "latency_in_batch_times": round(latency / statistics.mean(batch_times), 1),
        "drain_after_submit_s": round((last - job.created_at).total_seconds(), 2),
        "at": timezone.now().isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--low", type=int, default=10_000, help="low-priority jobs queued first")
    parser.add_argument("--warm", type=int, default=1_000, help="low jobs run before the submit")
    parser.add_argument("--priorities", default="high,low", help="the submitted job's priority, one run each")
    args = parser.parse_args()
    setup()
    fill(args.low)
    import modalkit_django

    modalkit_django.submit_job(message={"text": "x"}, schedule=modalkit_django.Schedule(priority="high"))
    print(explain(), flush=True)
    for priority in args.priorities.split(","):
        print(run(args.low, args.warm, priority), flush=True)


if __name__ == "__main__":
    main()
