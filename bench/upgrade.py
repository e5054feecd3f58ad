"""Submit latency while ``migrate`` upgrades a 0.1 database of N jobs (issue 22, "upgrades without locks").

    .venv/bin/python bench/upgrade.py                  # 2,000,000 jobs and as many deliveries
    .venv/bin/python bench/upgrade.py --jobs 200000 --json /tmp/upgrade.json

Builds a database at 0.1's schema (``0001_initial``) in its own PostgreSQL database, fills
it with N finished jobs and one sent delivery each, then submits jobs at a steady rate
(200/s) from a thread while the upgrade runs as an operator runs it:

1. ``migrate modalkit_django 0004_build_for_0_2`` before the deploy, while 0.1 serves: the
   submits are 0.1's insert (the statement 0.1's ORM sends: its columns only);
2. the deploy: the submits become 0.2's insert (every column);
3. ``migrate`` after the deploy (``0005_remove_after_0_2_deploy``).

Each submit is a short transaction of its own, scheduled at a fixed rate (open loop): its
latency runs from the time it was due, so a submit held behind a lock counts the whole
wait, and so do the ones queued behind it. Prints, for a quiet baseline and each step,
the submits' p50/p99/max latency, and each migration's duration and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
DATABASE = os.environ.get("BENCH_UPGRADE_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/modalkit_bench_upgrade")
APP = "modalkit_django"

SUBMIT_01 = (
    "INSERT INTO modalkit_django_job (id, model_name, status, message, meta, success_queue, failure_queue,"
    " result, error, attempts, reruns, created_at, started_at, finished_at, enqueued_at, run_after, lease_token,"
    " lease_expires_at, owner_id) VALUES (%s, 'sentiment', 'queued', %s, '{}', 'results', '', NULL, NULL, 0, 0,"
    " now(), NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
)
SUBMIT_02 = (
    "INSERT INTO modalkit_django_job (id, model_name, status, message, meta, success_queue, failure_queue,"
    " result, error, attempts, reruns, created_at, started_at, finished_at, run_after, lease_token,"
    " lease_expires_at, owner_id, idempotency_key, request_fingerprint, api_key_prefix, modal_call_id, expires_at,"
    " priority, progress, progress_message, batch_id, output_count, runs) VALUES (%s, 'sentiment', 'queued', %s,"
    " '{}', 'results', '', NULL, NULL, 0, 0, now(), NULL, NULL, NULL, NULL, NULL, NULL, '', '', '', NULL, NULL, 1,"
    " NULL, '', NULL, 0, 0)"
)
MESSAGE = json.dumps({"text": "I love this film"})


def server_and_name(url: str) -> tuple[dict[str, Any], str]:
    rest = url.split("://", 1)[1]
    user_host, name = rest.rsplit("/", 1)
    user, host_port = user_host.split("@")
    host, _, port = host_port.partition(":")
    return {"host": host, "port": int(port or 5432), "user": user}, name


def manage(script: str, env_extra: dict[str, str] | None = None) -> float:
    """Run Python in the demo project's ``manage.py shell`` on the bench database; its seconds."""
    env = {**os.environ, "DATABASE_URL": DATABASE, "DJANGO_DEBUG": "1", **(env_extra or {})}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("BROKER_URL", None)
    started = time.monotonic()
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "shell", "-c", script], cwd=ROOT, env=env, check=True)
    return time.monotonic() - started


def build(jobs: int) -> float:
    server, name = server_and_name(DATABASE)
    with psycopg.connect(**server, dbname="postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    manage(
        "from django.core.management import call_command as c\n"
        f"c('migrate', '{APP}', '0001_initial', verbosity=0)\n"
        "for app in ('admin', 'auth', 'contenttypes', 'sessions'): c('migrate', app, verbosity=0)"
    )
    started = time.monotonic()
    chunk = 100_000
    with psycopg.connect(**server, dbname=name, autocommit=True) as db:
        for first in range(0, jobs, chunk):
            size = min(chunk, jobs - first)
            db.execute(
                "WITH job AS (INSERT INTO modalkit_django_job (id, model_name, status, message, meta, success_queue,"
                " failure_queue, result, attempts, reruns, created_at, started_at, finished_at, enqueued_at)"
                " SELECT gen_random_uuid(), 'sentiment', 'succeeded', %s, '{\"request_id\": \"r-1\"}', 'results', '',"
                ' \'{"label": "POSITIVE", "score": 0.9998}\', 1, 0, t, t, t + interval \'1 second\', t'
                " FROM (SELECT now() - g * interval '1 second' AS t FROM generate_series(%s, %s) g) s"
                " RETURNING id, result, finished_at)"
                " INSERT INTO modalkit_django_queuedelivery (id, route, queue_name, backend, message_id, payload,"
                " status, attempts, last_error, sent_at, external_id, created_at, job_id)"
                " SELECT gen_random_uuid(), 'success', 'results', 'redis', id::text, result, 'sent', 1, '',"
                " finished_at, '', finished_at, id FROM job",
                [MESSAGE, first + 1, first + size],
            )
            print(f"  {first + size:,} jobs and deliveries", file=sys.stderr, flush=True)
        db.execute("VACUUM ANALYZE")
    return time.monotonic() - started


class Submitter:
    """Submits at ``rate`` per second from ``connections`` threads (a web server's workers),
    each submit due at its slot; records latency from the slot."""

    def __init__(self, rate: float, connections: int) -> None:
        self.rate = rate
        self.connections = connections
        self.phase = "baseline"
        self.statement = SUBMIT_01
        self.latencies: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True) for n in range(connections)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout)

    def run(self, n: int) -> None:
        server, name = server_and_name(DATABASE)
        interval = self.connections / self.rate
        with psycopg.connect(**server, dbname=name, autocommit=True) as db:
            due = time.monotonic() + n * interval / self.connections
            while not self.stopping.is_set():
                due += interval
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                phase = self.phase
                try:
                    db.execute(self.statement, [uuid.uuid4(), MESSAGE])
                except psycopg.Error as exc:
                    self.errors.append(f"{phase}: {exc}")
                    continue
                self.latencies.setdefault(phase, []).append(time.monotonic() - due)


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "submits": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2_000_000, help="jobs (and deliveries) in the 0.1 database")
    parser.add_argument("--rate", type=float, default=200, help="submits per second")
    parser.add_argument("--connections", type=int, default=8, help="submitting connections (web workers)")
    parser.add_argument("--baseline", type=float, default=5, help="seconds of submits before migrating")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    print(f"Building a 0.1 database of {args.jobs:,} jobs ...", file=sys.stderr)
    fill_s = build(args.jobs)
    submitter = Submitter(args.rate, args.connections)
    submitter.start()
    time.sleep(args.baseline)
    load = {"before": os.getloadavg()}

    submitter.phase = "before the deploy (0002-4)"
    expand_s = manage(
        f"from django.core.management import call_command as c\nc('migrate', '{APP}', '0004_build_for_0_2')"
    )
    load["after 0004"] = os.getloadavg()
    submitter.phase = "deployed"
    submitter.statement = SUBMIT_02
    time.sleep(2)
    submitter.phase = "after the deploy (0005)"
    contract_s = manage("from django.core.management import call_command as c\nc('migrate')")
    load["after 0005"] = os.getloadavg()
    submitter.stopping.set()
    submitter.join(timeout=10)

    result = {
        "jobs": args.jobs,
        "rate": args.rate,
        "connections": args.connections,
        "fill_s": round(fill_s, 1),
        "migrate_0002_0004_s": round(expand_s, 1),
        "migrate_0005_s": round(contract_s, 1),
        "load_average_1_5_15": {key: [round(value, 2) for value in values] for key, values in load.items()},
        "phases": {phase: summary(values) for phase, values in submitter.latencies.items()},
        "errors": submitter.errors[:5],
        "error_count": len(submitter.errors),
    }
    print(f"\n{args.jobs:,} jobs, submits at {args.rate:g}/s")
    print(f"migrate 0002-0004 (before the deploy): {expand_s:.1f} s   migrate 0005 (after): {contract_s:.1f} s")
    print(f"{'phase':<28}{'submits':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for phase, figures in result["phases"].items():  # type: ignore[union-attr]
        print(f"{phase:<28}{figures['submits']:>9}{figures['p50_ms']:>9}{figures['p99_ms']:>9}{figures['max_ms']:>9}")
    print(f"errors: {len(submitter.errors)}   load average: {result['load_average_1_5_15']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
