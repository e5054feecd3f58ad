"""Retention under load: `manage.py modalkit purge` of ``--jobs`` finished jobs while
clients submit at a steady ``--rate``.

    .venv/bin/python bench/retention.py --jobs 1000000    # make bench-retention

On a database of its own (``BENCH_RETENTION_DATABASE_URL``, default
``modalkit_bench_retention``, made afresh), ``--jobs`` finished jobs with a sent delivery
each are inserted server-side (bench/history.py's rows, all finished more than a day
ago), then ``VACUUM (ANALYZE)``. The demo project serves under uvicorn (2 processes, no
worker: submitted jobs stay queued) and one client submits at ``--rate`` per second,
first for ``--before`` seconds alone, then while the purge (``--older-than 1d``) runs,
then ``--after`` seconds more. It prints the purge's wall time, the submits' p50/p99/max
before, during and after it, and the dead tuples and sizes the purge left in each table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATABASE = os.environ.get("BENCH_RETENTION_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/modalkit_bench_retention")
os.environ["BENCH_DATABASE_URL"] = DATABASE
os.environ["DATABASE_URL"] = DATABASE
os.environ.setdefault("BENCH_QUEUE", f"bench-retention-{uuid.uuid4().hex[:6]}")
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"

from bench.history import SEED_DELIVERIES, SEED_HISTORY  # noqa: E402

# bench/history.py points the environment at its own database when imported: this one's.
os.environ["BENCH_DATABASE_URL"] = DATABASE
os.environ["DATABASE_URL"] = DATABASE
SERVER_ENV = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.serve_settings"}
from bench.submit import prepare, read_body, request_bytes, serve  # noqa: E402
from bench.submit import stop as stop_server  # noqa: E402

TABLES = ("modalkit_django_job", "modalkit_django_queuedelivery")


class SteadySubmits(threading.Thread):
    """One keep-alive client submitting at ``rate`` per second; each latency is kept
    with the moment its request was sent."""

    def __init__(self, port: int, raw: bytes, rate: float) -> None:
        super().__init__(daemon=True)
        self.port, self.raw, self.interval = port, raw, 1 / rate
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self.done = threading.Event()

    def run(self) -> None:
        asyncio.run(self.submit())

    async def submit(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        due = time.monotonic()
        while not self.done.is_set():
            due += self.interval
            started = time.monotonic()
            writer.write(self.raw)
            head = await reader.readuntil(b"\r\n\r\n")
            await read_body(reader, head)
            self.samples.append((started, time.monotonic() - started))
            self.errors += int(head.split(b" ", 2)[1]) != 202
            # Behind after a slow answer: carry on at the rate, without a burst to catch up.
            due = max(due, time.monotonic())
            await asyncio.sleep(due - time.monotonic())
        writer.close()

    def between(self, start: float, end: float) -> dict[str, float]:
        latencies = sorted(latency * 1000 for sent, latency in self.samples if start <= sent < end)
        if len(latencies) < 2:
            return {"submits": len(latencies)}
        return {
            "submits": len(latencies),
            "p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(statistics.quantiles(latencies, n=100, method="inclusive")[98], 1),
            "max_ms": round(latencies[-1], 1),
        }


def seed(rows: int) -> None:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        # 30 days of history, every job finished more than a day ago.
        cursor.execute(
            SEED_HISTORY.replace("now() -", "now() - interval '1 day' -"), {"rows": rows, "spacing": 29 * 86400 / rows}
        )
        cursor.execute(SEED_DELIVERIES)
        for table in TABLES:
            cursor.execute(f"VACUUM (ANALYZE) {table}")
    print(f"seeded {rows:,} finished jobs in {time.perf_counter() - started:.0f} s", flush=True)


def table_state() -> dict[str, dict[str, int]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, n_live_tup, n_dead_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables "
            "WHERE relname = ANY(%s)",
            [list(TABLES)],
        )
        return {name: {"live": live, "dead": dead, "bytes": size} for name, live, dead, size in cursor.fetchall()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=200, help="submits per second while it runs")
    parser.add_argument("--before", type=float, default=10, help="seconds of submits before the purge")
    parser.add_argument("--after", type=float, default=10, help="seconds of submits after it")
    parser.add_argument("--port", type=int, default=18400)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "retention.json")
    args = parser.parse_args()
    key = prepare(SERVER_ENV, DATABASE)
    import django

    django.setup()
    seed(args.jobs)
    body = {"message": {"text": "I love this film"}, "success_queue": "bench_results"}
    server = serve("uvicorn", "project.urls", args.port, 2, SERVER_ENV)
    submits = SteadySubmits(args.port, request_bytes("/api/async/predict", body, key), args.rate)
    try:
        submits.start()
        time.sleep(args.before)
        began = time.monotonic()
        purge = subprocess.run(
            [sys.executable, "manage.py", "modalkit", "purge", "--older-than", "1d", "--json"],
            cwd=ROOT, env={**os.environ}, capture_output=True, text=True,
        )  # fmt: skip
        ended = time.monotonic()
        time.sleep(args.after)
        submits.done.set()
        submits.join(timeout=10)
    finally:
        stop_server(server)
    if purge.returncode != 0:
        raise SystemExit(purge.stdout + purge.stderr)
    result = {
        "jobs": args.jobs,
        "purge_seconds": round(ended - began, 1),
        "purge_output": json.loads(purge.stdout),
        "submits_before": submits.between(0, began),
        "submits_during": submits.between(began, ended),
        "submits_after": submits.between(ended, float("inf")),
        "submit_errors": submits.errors,
        "tables_after": table_state(),
        "load_average": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(result, indent=2))
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
