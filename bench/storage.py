"""What one job costs PostgreSQL: row versions, index entries, WAL and bytes on disk.

    .venv/bin/python bench/storage.py --jobs 5000 --processes 2

The queue is filled as a group-committed submit fills it (one multi-row INSERT per 1,000
jobs, their wake-ups sent), then ``--processes`` worker processes drain it, each job
stored and its result delivered to a Redis list (bench/settings.py). Between a snapshot
taken before the INSERT and one taken after the last delivery is recorded, it counts:

- **row versions** per job in each table (``pg_stat_user_tables``: inserts, updates, how
  many of the updates were HOT, deletes);
- **index entries** per job in each index, and **heap records** (insert, update, HOT
  update, row lock) per job in each table, read from the WAL itself with ``pg_waldump``
  (a temporary physical replication slot keeps the segments until they are read);
- **WAL bytes** per job (``pg_wal_lsn_diff``), and the **bytes on disk** per finished
  job (``pg_total_relation_size`` of each table, its indexes and TOAST included).

It needs a PostgreSQL whose WAL files it can read (the same machine, as root or the
``postgres`` user) and a database of its own (``BENCH_DATABASE_URL``, default
``modalkit_bench_storage``), truncated before each run. The figures are counts, not
times: a busy machine does not change them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/modalkit_bench_storage")
os.environ.setdefault("BENCH_QUEUE", f"bench-storage-{uuid.uuid4().hex[:6]}")
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"

from bench.throughput import REDIS_URL, RESULTS_KEY, _create_database, start_worker, stop  # noqa: E402

CHUNK = 1000
SLOT = "modalkit_bench_storage"
# "rel 1663/16384/16401" in a WAL record's block reference: tablespace/database/relfilenode.
BLOCK_REFERENCE = re.compile(r"rel \d+/(\d+)/(\d+)")
HEAP_RECORDS = ("INSERT", "MULTI_INSERT", "UPDATE", "HOT_UPDATE", "LOCK", "DELETE")


def pg_waldump() -> str:
    found = shutil.which("pg_waldump") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_waldump"))), None)
    if found is None:
        raise SystemExit("pg_waldump not found (Debian: postgresql-15's bin folder)")
    return str(found)


def table_stats(cursor: Any) -> dict[str, dict[str, int]]:
    cursor.execute(
        "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables "
        "WHERE relname LIKE 'modalkit%%'"
    )
    return {name: {"ins": ins, "upd": upd, "hot": hot, "del": dele} for name, ins, upd, hot, dele in cursor.fetchall()}


def relations(cursor: Any) -> dict[int, tuple[str, str]]:
    """relfilenode → (relation, table it belongs to), for our tables, their indexes and TOAST."""
    cursor.execute(
        """
        SELECT c.relfilenode, c.relname, coalesce(t.relname, toast_of.relname, c.relname)
        FROM pg_class c
        LEFT JOIN pg_index i ON i.indexrelid = c.oid
        LEFT JOIN pg_class t ON t.oid = i.indrelid
        LEFT JOIN pg_class toast_of ON toast_of.reltoastrelid = c.oid
        WHERE c.relfilenode <> 0
          AND coalesce(t.relname, toast_of.relname, c.relname) LIKE 'modalkit%%'
        """
    )
    return {node: (name, table) for node, name, table in cursor.fetchall()}


def wal_records(data_directory: str, start: str, end: str, database_oid: int) -> Counter[tuple[int, str, str]]:
    """(relfilenode, resource manager, record type) → count, for this database's records."""
    dump = subprocess.run(
        [pg_waldump(), "--path", f"{data_directory}/pg_wal", "--start", start, "--end", end],
        capture_output=True,
        text=True,
        check=False,
    )
    counts: Counter[tuple[int, str, str]] = Counter()
    for line in dump.stdout.splitlines():
        fields = line.split("desc: ", 1)
        if len(fields) != 2 or not line.startswith("rmgr: "):
            continue
        manager = line.split()[1]
        kind = fields[1].split()[0]
        reference = BLOCK_REFERENCE.search(fields[1])
        if reference and int(reference.group(1)) == database_oid:
            counts[(int(reference.group(2)), manager, kind)] += 1
    if not counts:
        raise SystemExit(f"pg_waldump read no records of this database:\n{dump.stderr[-2000:]}")
    return counts


def fill(total: int) -> None:
    from django.utils import timezone

    from modalkit_django import broker
    from modalkit_django.models import Job
    from modalkit_django.worker import tasks

    ids = []
    for start in range(0, total, CHUNK):
        now = timezone.now()
        jobs = Job.objects.bulk_create(
            Job(model_name="sentiment", message={"text": f"a good film {n}"}, success_queue="bench_results",
                created_at=now)
            for n in range(start, min(start + CHUNK, total))
        )  # fmt: skip
        ids.extend(job.id for job in jobs)

    async def wake() -> None:
        await broker.get_broker().startup()
        await tasks.BrokerWaker().awake_jobs(ids)
        await broker.get_broker().shutdown()

    asyncio.run(wake())


def drain(total: int, processes: int) -> float:
    import redis

    from modalkit_django.models import QueueDelivery

    results = redis.Redis.from_url(REDIS_URL)
    results.delete(RESULTS_KEY)
    env = {**os.environ, "INFERENCE": "local"}
    command = [sys.executable, "manage.py", "taskiq", "worker", "--workers", str(processes), "--log-level", "WARNING"]
    worker = start_worker(command, env)
    began = time.monotonic()
    try:
        while results.llen(RESULTS_KEY) < total or QueueDelivery.objects.filter(status="sent").count() < total:
            if worker.poll() is not None:
                raise RuntimeError(worker.stderr.read().decode() if worker.stderr else "worker died")
            if time.monotonic() - began > 600:
                raise TimeoutError("jobs not done in 600 s")
            time.sleep(0.2)
    finally:
        stop(worker)  # its exit flushes its statistics
    return time.monotonic() - began


def measure(total: int, processes: int) -> dict[str, Any]:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from modalkit_django.models import Job, QueueDelivery

    _create_database(connection.settings_dict)
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {QueueDelivery._meta.db_table}, {Job._meta.db_table} CASCADE")
        cursor.execute("VACUUM ANALYZE")
        cursor.execute("SHOW data_directory")
        data_directory = cursor.fetchone()[0]
        cursor.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
        database_oid = cursor.fetchone()[0]
        cursor.execute("SELECT pg_drop_replication_slot(%s) FROM pg_replication_slots WHERE slot_name = %s", [SLOT] * 2)
        cursor.execute("SELECT pg_create_physical_replication_slot(%s, true)", [SLOT])
        try:
            cursor.execute("SELECT pg_stat_force_next_flush()")
            cursor.execute("SELECT pg_switch_wal(), pg_current_wal_insert_lsn()")
            start = cursor.fetchone()[1]
            time.sleep(1)  # other backends' statistics reach the shared counters
            before = table_stats(cursor)
            connection.close()
            fill(total)
            seconds = drain(total, processes)
            time.sleep(1.5)
            with connection.cursor() as after_cursor:
                after = table_stats(after_cursor)
                after_cursor.execute(
                    "SELECT pg_current_wal_insert_lsn(), pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", [start]
                )
                end, wal_bytes = after_cursor.fetchone()
                after_cursor.execute("SELECT pg_switch_wal()")
                names = relations(after_cursor)
                after_cursor.execute(
                    "SELECT relname, pg_total_relation_size(oid) FROM pg_class "
                    "WHERE relkind = 'r' AND relname LIKE 'modalkit%%'"
                )
                sizes = dict(after_cursor.fetchall())
                records = wal_records(data_directory, str(start), str(end), database_oid)
        finally:
            with connection.cursor() as cleanup:
                cleanup.execute("SELECT pg_drop_replication_slot(%s)", [SLOT])
    return report(total, processes, seconds, before, after, records, names, sizes, float(wal_bytes))


def report(
    total: int,
    processes: int,
    seconds: float,
    before: dict[str, dict[str, int]],
    after: dict[str, dict[str, int]],
    records: Counter[tuple[int, str, str]],
    names: dict[int, tuple[str, str]],
    sizes: dict[str, int],
    wal_bytes: float,
) -> dict[str, Any]:
    rows: dict[str, dict[str, float]] = {}
    for table, counts in after.items():
        delta = {key: value - before.get(table, {}).get(key, 0) for key, value in counts.items()}
        if any(delta.values()):
            rows[table] = {key: round(value / total, 2) for key, value in delta.items()}
    index_entries: dict[str, float] = defaultdict(float)
    heap: dict[str, Counter[str]] = defaultdict(Counter)
    for (node, manager, kind), count in records.items():
        if node not in names:
            continue
        name, table = names[node]
        if manager == "Btree" and kind.startswith("INSERT_"):
            index_entries[f"{table}: {name}"] += count
        elif manager in ("Heap", "Heap2") and kind in HEAP_RECORDS:
            heap[name][kind] += count
    return {
        "jobs": total,
        "processes": processes,
        "drain_seconds": round(seconds, 1),
        "row_versions_per_job": rows,
        "heap_records_per_job": {
            table: {kind: round(count / total, 2) for kind, count in sorted(kinds.items())}
            for table, kinds in sorted(heap.items())
        },
        "index_entries_per_job": {
            name: round(count / total, 2) for name, count in sorted(index_entries.items(), key=lambda item: -item[1])
        },
        "index_entries_per_job_total": round(sum(index_entries.values()) / total, 1),
        "wal_bytes_per_job": round(wal_bytes / total),
        "bytes_on_disk_per_finished_job": {
            table: round(size / total) for table, size in sorted(sizes.items()) if size > 16384
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "storage.json")
    args = parser.parse_args()
    result = measure(args.jobs, args.processes)
    print(json.dumps(result, indent=2))
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
