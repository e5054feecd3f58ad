"""Accepting 1,000 jobs over HTTP: one batch against 1,000 single submits, same server, same run.

    .venv/bin/python bench/batch_submit.py                   # uvicorn, 2 processes
    .venv/bin/python bench/batch_submit.py --items 1000 --rounds 5 --clients 8,32

The server is the one ``bench/submit.py`` starts (``bench/serve_settings.py``: the demo
project on PostgreSQL and Redis), on a fresh database with a demo key (its
``prepare()``). Timed, to the last ``202``:

- **batch**: one ``POST /api/async/predict/batch`` holding ``--items`` items (the batch
  row, one bulk INSERT of its jobs, the wake-ups);
- **singles**: ``--items`` ``POST /api/async/predict`` requests with the same messages,
  one after another, then from 8 and 32 concurrent keep-alive clients (where the
  project coalesces concurrent submits into shared INSERTs).

Each is repeated ``--rounds`` times; the median is reported, and the ratio of singles'
time to the batch's. No worker runs: the jobs stay queued.
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

from bench.submit import drive, prepare, request_bytes, serve, stop  # noqa: E402

PAUSE_SECONDS = 1.0
DATABASE = os.environ.get("BENCH_BATCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/modalkit_bench_batch")


def timed(port: int, raw: bytes, clients: int, total: int) -> float:
    """Seconds for ``total`` requests from ``clients`` clients; every one must be accepted."""
    # The wake-ups of the previous measurement are sent after its answers: let them go
    # first, so that no measurement pays for another's.
    time.sleep(PAUSE_SECONDS)
    seconds, _, ok, errors = asyncio.run(drive(port, raw, clients, total))
    if errors or ok != total:
        raise RuntimeError(f"{errors} of {total} requests failed")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", default="8,32", help="concurrent clients for the singles, besides 1")
    parser.add_argument("--processes", type=int, default=2, help="server worker processes")
    parser.add_argument("--port", type=int, default=18100)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "batch_submit.json")
    args = parser.parse_args()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.serve_settings",
        "DATABASE_URL": DATABASE,
        "BENCH_QUEUE": f"bench-batch-{uuid.uuid4().hex[:6]}",
    }
    key = prepare(env, DATABASE)
    message = {"text": "I love this film"}
    single = request_bytes("/api/async/predict", {"message": message, "meta": {"request_id": "r-1"}}, key)
    items = [{"message": message, "meta": {"request_id": f"r-{n}"}} for n in range(args.items)]
    batch = request_bytes("/api/async/predict/batch", {"items": items}, key)
    process = serve("uvicorn", "project.urls", args.port, args.processes, env)
    results: dict[str, list[float]] = {}
    try:
        timed(args.port, single, 8, 300)  # warm both processes up
        timed(args.port, batch, 2, 2)
        for _ in range(args.rounds):
            results.setdefault("batch", []).append(timed(args.port, batch, 1, 1))
            for clients in (1, *(int(part) for part in args.clients.split(","))):
                results.setdefault(f"singles x{clients}", []).append(timed(args.port, single, clients, args.items))
    finally:
        stop(process)
        import redis

        redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")).delete(env["BENCH_QUEUE"])
    batch_s = statistics.median(results["batch"])
    print(f"\naccepting {args.items} jobs over HTTP, uvicorn x{args.processes}, median of {args.rounds} rounds")
    print(f"{'how':14} {'seconds':>8} {'jobs/s':>8} {'batch is':>10}")
    for how, seconds in results.items():
        median = statistics.median(seconds)
        print(f"{how:14} {median:8.3f} {args.items / median:8.0f} {median / batch_s:9.1f}x")
    args.json.write_text(json.dumps({"items": args.items, "processes": args.processes, "seconds": results}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
