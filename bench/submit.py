"""Submits per second over HTTP: the project against a hand-written floor, same server, same run.

    .venv/bin/python bench/submit.py                      # uvicorn, 1/8/32/128 clients
    .venv/bin/python bench/submit.py --servers uvicorn,granian

For each ASGI server, both apps are served the same way (``bench/serve_settings.py``:
the demo project's settings on PostgreSQL and Redis, the same middleware, database
options and processes) and driven by the same closed-loop asyncio HTTP/1.1 client:

- **project**: ``POST /api/async/predict`` with an API key (auth, validation, the job
  row, the wake-up);
- **floor**: ``POST /floor/submit``, a hand-written async view doing one INSERT and one
  TaskIQ ``.kiq``, no auth (``bench/floor.py``).

Then the synchronous predict: ``POST /api/predict`` against a minimal ninja endpoint
behind the same auth (``/floor/predict``), at one client. Prints a table and writes JSON.
No worker runs: the jobs stay queued.
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
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATABASE = os.environ.get("BENCH_SUBMIT_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/modalkit_bench_submit")


@dataclass
class Level:
    server: str
    app: str
    path: str
    clients: int
    requests: int
    per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def request_bytes(path: str, body: dict[str, object], key: str | None) -> bytes:
    payload = json.dumps(body).encode()
    headers = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        *([f"Authorization: Bearer {key}"] if key else []),
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + payload


async def read_body(reader: asyncio.StreamReader, head: bytes) -> None:
    lines = head.lower().split(b"\r\n")
    lengths = [int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:")]
    if lengths:
        await reader.readexactly(lengths[0])
        return
    if b"transfer-encoding: chunked" in lines:
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")


async def drive(port: int, raw: bytes, clients: int, total: int) -> tuple[float, list[float], int, int]:
    """``clients`` keep-alive connections send ``total`` requests between them, each
    waiting for its answer before the next. Returns seconds, latencies, successes, errors."""
    latencies: list[float] = []
    outcome = {"ok": 0, "errors": 0}
    remaining = [total]

    async def one_client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while remaining[0] > 0:
                remaining[0] -= 1
                started = time.perf_counter()
                try:
                    writer.write(raw)
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                    status = int(head.split(b" ", 2)[1])
                    await read_body(reader, head)
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    outcome["errors"] += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                latencies.append(time.perf_counter() - started)
                outcome["ok" if 200 <= status < 300 else "errors"] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return time.perf_counter() - started, latencies, outcome["ok"], outcome["errors"]


def measure(server: str, app: str, path: str, raw: bytes, port: int, clients: int, total: int) -> Level:
    seconds, latencies, ok, errors = asyncio.run(drive(port, raw, clients, total))
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return Level(server, app, path, clients, total, ok / seconds, quantiles[49] * 1000, quantiles[98] * 1000, errors)


def serve(server: str, urlconf: str, port: int, processes: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    app = "project.asgi:application"
    command = {
        "uvicorn": [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
                    "--workers", str(processes), "--no-access-log", "--log-level", "warning"],
        "granian": [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
                    "--workers", str(processes), "--no-ws", "--log-level", "warning", app],
    }[server]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env={**env, "BENCH_URLCONF": urlconf})
    deadline = time.monotonic() + 60
    while True:
        try:
            with __import__("socket").create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server} did not start") from None
            time.sleep(0.2)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def prepare(env: dict[str, str], database: str = DATABASE) -> str:
    """A fresh ``database`` (the one ``env`` points at), migrated, with a demo user;
    returns the user's API key."""
    import psycopg

    base, name = database.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    output = subprocess.run([*manage, "demo_setup"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return next(line for line in output.stdout.splitlines() if line.startswith("API key:")).removeprefix("API key: ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="uvicorn", help="uvicorn,granian")
    parser.add_argument("--clients", default="1,8,32,128")
    parser.add_argument("--requests", type=int, default=3000, help="per level")
    parser.add_argument("--processes", type=int, default=2, help="server worker processes")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "submit.json")
    args = parser.parse_args()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.serve_settings",
        "DATABASE_URL": DATABASE,
        "BENCH_QUEUE": f"bench-submit-{uuid.uuid4().hex[:6]}",
    }
    key = prepare(env)
    body = {"message": {"text": "I love this film"}, "meta": {"request_id": "r-1"}}
    sides = {
        "project": ("project.urls", "/api/async/predict", request_bytes("/api/async/predict", body, key)),
        "floor": ("bench.floor", "/floor/submit", request_bytes("/floor/submit", body, None)),
        "floor-lean": ("bench.floor", "/api/floor/submit", request_bytes("/api/floor/submit", body, None)),
    }
    levels: list[Level] = []
    for server in args.servers.split(","):
        for app, (urlconf, path, raw) in sides.items():
            port = 18000 + len(levels)
            process = serve(server, urlconf, port, args.processes, env)
            try:
                measure(server, app, path, raw, port, 8, 300)  # warm both processes up
                for clients in (int(part) for part in args.clients.split(",")):
                    level = measure(server, app, path, raw, port, clients, args.requests)
                    levels.append(level)
                    print(
                        f"{server:8} {app:10} {clients:>4} clients {level.per_s:8.0f} req/s  "
                        f"p50 {level.p50_ms:6.1f} ms  p99 {level.p99_ms:6.1f} ms  errors {level.errors}",
                        flush=True,
                    )
                if app == "project":
                    predict = request_bytes("/api/predict", {"message": body["message"]}, key)
                    levels.append(measure(server, "project", "/api/predict", predict, port, 1, 1000))
                elif app == "floor-lean":
                    floor_predict = request_bytes("/api/floor/predict", {}, key)
                    levels.append(measure(server, "floor", "/api/floor/predict", floor_predict, port, 1, 1000))
            finally:
                stop(process)
    print("\nserver   clients  project req/s  floor req/s (lean path)  ratio (lean)  project p50/p99 ms  errors")
    for server in args.servers.split(","):
        for clients in (int(part) for part in args.clients.split(",")):
            mine, floor, lean = (
                next(lv for lv in levels if (lv.server, lv.clients, lv.path) == (server, clients, sides[app][1]))
                for app in ("project", "floor", "floor-lean")
            )
            print(f"{server:8} {clients:>7}  {mine.per_s:13.0f}  {floor.per_s:11.0f} ({lean.per_s:5.0f})  "
                  f"{mine.per_s / floor.per_s:5.2f} ({mine.per_s / lean.per_s:4.2f})  "
                  f"{mine.p50_ms:8.1f} / {mine.p99_ms:6.1f}  {mine.errors}/{floor.errors}/{lean.errors}")  # fmt: skip
        predict = next(lv for lv in levels if (lv.server, lv.path) == (server, "/api/predict"))
        minimal = next(lv for lv in levels if (lv.server, lv.path) == (server, "/api/floor/predict"))
        print(f"{server:8} sync /predict p50 {predict.p50_ms:.2f} ms vs minimal ninja + auth {minimal.p50_ms:.2f} ms: "
              f"{predict.p50_ms - minimal.p50_ms:+.2f} ms")  # fmt: skip
    args.json.write_text(json.dumps([asdict(level) for level in levels], indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
