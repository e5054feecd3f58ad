"""Jobs per second, end to end, for one worker process draining a full queue.

    .venv/bin/python bench/throughput.py --jobs 5000 --rounds 5

Runs, in one session so the figures compare:

1. the raw TaskIQ baseline: a no-op task on the same Redis stream broker, no database;
2. modalkit-django with local inference: a queued job row per message; the worker
   claims it, runs the demo model, stores the result, creates and sends the success
   delivery (pushed to a Redis list by the Redis queue backend);
3. the same with Modal inference: the real ``modal`` SDK calling the demo deployment
   on the loopback fake control plane (tests/modal_fake), run as its own process.

The queue is filled first, then the worker (``--workers N`` for each of ``--processes``)
is started and timed from its first claim to its last send; the baseline, from its
first read to its last acknowledgement. ``--rounds`` alternates baseline and local
runs and reports the medians, the ratio being the median of each round's own. For
Modal, the fake's counters give the Modal calls (``FunctionMap`` RPCs: one ``.spawn``
per job) per job and the batch sizes Modal actually ran (``modal_batch_sizes``: how
many batches of each size).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# The Redis list the results are pushed to (bench/settings.py's key prefix, and the jobs'
# success queue): a prefix of its own keeps two benchmarks on one Redis apart.
RESULTS_KEY = os.environ.get("BENCH_KEY_PREFIX", "bench:") + "bench_results"


def start_worker(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def max_async_option(value: int | None) -> list[str]:
    return [] if value is None else ["--max-async-tasks", str(value)]


def wait_drained(redis_client: object, queue: str, total: int, timeout: float) -> float:
    """Seconds from the first to the last acknowledgement of the stream's messages."""
    first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [group] = redis_client.xinfo_groups(queue)  # type: ignore[attr-defined]
        read = group["entries-read"] or 0
        if first is None and read:
            first = time.monotonic()
        if read >= total and group["pending"] == 0 and group["lag"] == 0:
            return time.monotonic() - (first or time.monotonic())
        time.sleep(0.01)
    raise TimeoutError(f"{queue} not drained in {timeout}s")


def bench_noop(total: int, max_async: int | None, workers: int = 1) -> float:
    import redis
    from taskiq_redis import RedisStreamBroker

    queue = f"bench-noop-{uuid.uuid4().hex[:6]}"
    os.environ["BENCH_QUEUE"] = queue
    import importlib

    from bench import noop

    noop = importlib.reload(noop)  # its broker reads BENCH_QUEUE when the module runs

    async def fill() -> None:
        broker: RedisStreamBroker = noop.broker
        await broker.startup()
        for index in range(total):
            await noop.noop.kiq(str(index))
        await broker.shutdown()

    asyncio.run(fill())
    client = redis.Redis.from_url(REDIS_URL)
    env = {**os.environ, "BENCH_QUEUE": queue}
    worker = start_worker(
        [sys.executable, "-m", "taskiq", "worker", "bench.noop:broker", "--workers", str(workers),
         "--log-level", "WARNING", *max_async_option(max_async)],
        env,
    )  # fmt: skip
    try:
        seconds = wait_drained(client, queue, total, timeout=300)
    finally:
        stop(worker)
        client.delete(queue)
    return total / seconds


def bench_modalkit(
    total: int, max_async: int | None, extra_env: dict[str, str], workers: int = 1, prefix: Sequence[str] = ()
) -> tuple[float, dict[str, float]]:
    """Jobs per second for ``total`` jobs drained by ``workers`` processes, whose command
    starts with ``prefix`` (bench/rtt.py: ``ip netns exec NAME``)."""
    # One stream per session: Django reads its settings (and the queue name) once.
    queue = os.environ.setdefault("BENCH_MODALKIT_QUEUE", f"bench-modalkit-{uuid.uuid4().hex[:6]}")
    os.environ["BENCH_QUEUE"] = queue
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.db.models import Max, Min
    from django.utils import timezone

    from modalkit_django import broker
    from modalkit_django.models import Job, QueueDelivery
    from modalkit_django.worker import tasks

    _create_database(connection.settings_dict)
    call_command("migrate", verbosity=0)
    # Truncated, not deleted: every round starts from the same fresh tables, not from the
    # dead rows of the ones before.
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {QueueDelivery._meta.db_table}, {Job._meta.db_table} CASCADE")
    now = timezone.now()
    jobs = Job.objects.bulk_create(
        Job(model_name="sentiment", message={"text": f"a good film {n}"}, success_queue="bench_results",
            created_at=now)
        for n in range(total)
    )  # fmt: skip

    async def fill() -> None:
        # The consumer group must exist before the messages, or the worker never sees them.
        await broker.get_broker().startup()
        # The wake-ups the submits would have sent: one run_jobs per WAKE_CHUNK jobs, as a
        # batch submit sends (a worker claims whatever is runnable: they only nudge).
        await tasks.BrokerWaker().awake_jobs([job.id for job in jobs])
        await broker.get_broker().shutdown()

    asyncio.run(fill())
    connection.close()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.settings", "BENCH_QUEUE": queue, **extra_env}
    worker = start_worker(
        [*prefix, sys.executable, "manage.py", "taskiq", "worker", "--workers", str(workers), "--log-level",
         "WARNING", *max_async_option(max_async)],
        env,
    )  # fmt: skip
    import redis

    results = redis.Redis.from_url(REDIS_URL)
    results.delete(RESULTS_KEY)
    try:
        deadline = time.monotonic() + 600
        # Polled on the Redis list, as cheap as the no-op's poll of its stream: a COUNT of
        # the deliveries every 0.2 s had PostgreSQL scan the table (13 ms at 20,000 rows)
        # beside the worker it measures. The count, once the list is full, waits for the
        # last sends to be recorded.
        while results.llen(RESULTS_KEY) < total or (QueueDelivery.objects.filter(status="sent").count() < total):
            if worker.poll() is not None:
                raise RuntimeError(worker.stderr.read().decode() if worker.stderr else "worker died")
            if time.monotonic() > deadline:
                raise TimeoutError("jobs not done in 600 s")
            time.sleep(0.01)
    finally:
        stop(worker)
    pushed = results.llen(RESULTS_KEY)
    assert pushed == total, f"{pushed} results on the Redis list for {total} jobs"
    span = Job.objects.aggregate(start=Min("started_at"))["start"]
    end = QueueDelivery.objects.aggregate(end=Max("sent_at"))["end"]
    seconds = (end - span).total_seconds()
    statuses = dict(Job.objects.values_list("status").annotate(n=Max("attempts")))
    return total / seconds, {"seconds": round(seconds, 2), **{f"max attempts {k}": v for k, v in statuses.items()}}


class ModalFakeProcess:
    """tests/modal_fake as a process, serving the demo deployment."""

    def __init__(self) -> None:
        from tests.modal_fake.env import client_env

        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.modal_fake", "--port", "0",
             "--register", "modalkit-sentiment-dev:SentimentService=project.modal_app:SentimentService"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().split()[1]
        self.stats_url = self.process.stdout.readline().split()[1]
        self.env = {**client_env(self.url), "INFERENCE": "modal"}

    def stats(self) -> dict[str, object]:
        import httpx

        return dict(httpx.get(self.stats_url, timeout=10).json())

    def stop(self) -> None:
        stop(self.process)  # type: ignore[arg-type]


def _create_database(settings_dict: dict[str, object]) -> None:
    import psycopg

    name = settings_dict["NAME"]
    with psycopg.connect(host=str(settings_dict["HOST"]), port=int(settings_dict["PORT"] or 5432),
                         user=str(settings_dict["USER"]), dbname="postgres", autocommit=True) as conn:  # fmt: skip
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument(
        "--max-async-tasks", type=int, help="for both workers; default: each command's own (TaskIQ's is 100)"
    )
    parser.add_argument("--processes", default="1,2", help="worker processes per row, e.g. 1,2")
    parser.add_argument("--inference", choices=["local", "modal", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=1, help="alternated baseline/local rounds; medians shown")
    parser.add_argument("--no-sweep-row", action="store_true", help="skip the row drained with the sweep on")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "throughput.json", help="where to write the rows")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []

    def row(name: str, processes: int, rate: float, ratio: float | None, **details: object) -> None:
        rows.append({"row": name, "processes": processes, "per_s": round(rate), "ratio": ratio, **details})
        shown = f"{ratio:.2f}" if ratio else "    "
        print(f"{name:42} {processes:>2} proc {rate:7.0f}/s  {shown}  {details or ''}", flush=True)

    for processes in (int(part) for part in args.processes.split(",")):
        # Alternated rounds, each ratio against the baseline run just before it: the machine
        # is shared, and the ratio of neighbours is steadier than a ratio of medians.
        baselines, rates, ratios = [], [], []
        for _ in range(args.rounds):
            baselines.append(bench_noop(args.jobs, args.max_async_tasks, processes))
            if args.inference in ("local", "both"):
                rate, details = bench_modalkit(args.jobs, args.max_async_tasks, {"INFERENCE": "local"}, processes)
                rates.append(rate)
                ratios.append(rate / baselines[-1])
        baseline = statistics.median(baselines)
        row("raw TaskIQ no-op (baseline)", processes, baseline, None)
        if rates:
            rounds = {"ratios": [round(ratio, 2) for ratio in ratios]} if args.rounds > 1 else {}
            row("modalkit-django, local inference", processes, statistics.median(rates), statistics.median(ratios),
                **rounds, **details)  # fmt: skip
        if processes == 1 and args.inference in ("local", "both") and not args.no_sweep_row:
            env = {"INFERENCE": "local", "BENCH_SWEEP": "1"}
            rate, details = bench_modalkit(args.jobs, args.max_async_tasks, env, processes)
            row("modalkit-django, local, the sweep on", processes, rate, rate / baseline, **details)
        if processes == 1 and args.inference in ("modal", "both"):
            fake = ModalFakeProcess()
            try:
                rate, details = bench_modalkit(args.jobs, args.max_async_tasks, fake.env, processes)
                stats = fake.stats()
            finally:
                fake.stop()
            calls = round(float(stats["function_maps"]) / args.jobs, 2)  # type: ignore[arg-type]
            sizes = Counter(stats["batch_sizes"])  # type: ignore[arg-type]
            row(
                "modalkit-django, Modal (fake control plane)",
                processes,
                rate,
                rate / baseline,
                modal_calls_per_job=calls,
                mean_modal_batch=round(float(stats["mean_batch_size"]), 1),
                modal_batch_sizes={size: sizes[size] for size in sorted(sizes)},
                **details,
            )  # type: ignore[arg-type]
    args.json.write_text(json.dumps({"jobs": args.jobs, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
