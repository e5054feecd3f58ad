"""Many clients watching one job's events (GET /jobs/{id}/events) through uvicorn.

    .venv/bin/python bench/events_watchers.py --watchers 50 --pool 2

Migrates a database of its own (``BENCH_EVENTS_DATABASE_URL``, default
``postgres://postgres@127.0.0.1:5432/modalkit_bench_events``), starts uvicorn on the
project (the API on its lean ASGI path, a database pool of ``--pool``), queues one job
(its wake-up goes to a Redis stream no worker reads: it stays queued), opens
``--watchers`` event streams on it, and reports: how long until every watcher had its
first event; the latency of a plain GET /jobs/{id} while they all watch; the server's
connections in ``pg_stat_activity`` meanwhile; the database's commit rate with the
watchers, with as many more, and once those more disconnected (their streams must stop
polling); and, once the job is canceled, how long until every watcher had its ``end``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/modalkit_bench_events"


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _create_database(url: str) -> None:
    name = urlparse(url).path.lstrip("/")
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            connection.execute(f'CREATE DATABASE "{name}"')


async def _watch(client: httpx.AsyncClient, job_id: str, first: list[float], ended: list[float]) -> None:
    async with client.stream("GET", f"/api/jobs/{job_id}/events") as response:
        async for line in response.aiter_lines():
            if line.startswith("event: status") and len(first) < 10_000:
                first.append(time.monotonic())
            if line == "event: end":
                ended.append(time.monotonic())
                return


async def _run(base: str, key: str, watchers: int, database_url: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=watchers + 10)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120, limits=limits) as client:
        job_id = (await client.post("/api/async/predict", json={"message": {"text": "good"}})).json()["job_id"]
        first: list[float] = []
        ended: list[float] = []
        started = time.monotonic()
        tasks = [asyncio.create_task(_watch(client, job_id, first, ended)) for _ in range(watchers)]
        while len(first) < watchers:
            await asyncio.sleep(0.01)
        connected = max(first) - started
        latencies = []
        for _ in range(20):
            t0 = time.monotonic()
            assert (await client.get(f"/api/jobs/{job_id}")).status_code == 200
            latencies.append(time.monotonic() - t0)
        name = urlparse(database_url).path.lstrip("/")
        with psycopg.connect(database_url) as connection:
            connections = connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [name]
            ).fetchone()
        await asyncio.sleep(1)  # past the connection burst, which the statistics report late
        before = _commits_per_second(database_url)
        # Watchers that go away (closed mid-stream): their streams must stop polling.
        quitters = [asyncio.create_task(_watch(client, job_id, [], [])) for _ in range(watchers)]
        await asyncio.sleep(2)
        with_quitters = _commits_per_second(database_url)
        for task in quitters:
            task.cancel()
        await asyncio.gather(*quitters, return_exceptions=True)
        await asyncio.sleep(1)
        after_quitting = _commits_per_second(database_url)
        canceled_at = time.monotonic()
        assert (await client.post(f"/api/jobs/{job_id}/cancel")).status_code == 200
        await asyncio.gather(*tasks)
    print(f"watchers: {watchers}")
    print(f"all connected (first event each) in {connected:.2f} s")
    median, worst = statistics.median(latencies) * 1000, max(latencies) * 1000
    print(f"GET /jobs/{{id}} while they watch: median {median:.1f} ms, max {worst:.1f} ms")
    print(f"server connections to the database meanwhile: {connections[0] if connections else '?'}")
    print(f"cancel -> every watcher had `end`: {max(ended) - canceled_at:.2f} s")
    print(
        f"database commits/s: {before:.0f} with {watchers} watchers, {with_quitters:.0f} with {watchers} more, "
        f"{after_quitting:.0f} once those disconnected"
    )


def _commits_per_second(database_url: str, seconds: float = 2.0) -> float:
    name = urlparse(database_url).path.lstrip("/")
    query = "SELECT xact_commit FROM pg_stat_database WHERE datname = %s"
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_clear_snapshot()")
        start = connection.execute(query, [name]).fetchone()[0]  # type: ignore[index]
        time.sleep(seconds)
        connection.execute("SELECT pg_stat_clear_snapshot()")
        end = connection.execute(query, [name]).fetchone()[0]  # type: ignore[index]
    return float(end - start) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--pool", type=int, default=2)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    url = os.environ.get("BENCH_EVENTS_DATABASE_URL", DEFAULT_URL)
    _create_database(url)
    env = {**os.environ, "DATABASE_URL": url, "DATABASE_POOL_SIZE": str(args.pool), "DJANGO_DEBUG": "0"}
    # A Redis broker that no worker reads: the job stays queued while it is watched.
    env["BROKER_URL"] = os.environ.get("BENCH_EVENTS_BROKER_URL", "redis://127.0.0.1:6379/15")
    env.setdefault("DJANGO_SECRET_KEY", "bench-only-not-secret-" + "k" * 40)
    _manage(env, "migrate", "--noinput")
    key = next(line for line in _manage(env, "demo_setup").splitlines() if line.startswith("API key:"))[9:]
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "project.asgi:application", "--port", str(args.port),
         "--no-access-log", "--log-level", "warning"],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/api/docs").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.1)
        asyncio.run(_run(base, key, args.watchers, url))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
