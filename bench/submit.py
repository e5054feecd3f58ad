"""Submits per second over HTTP: the project against a hand-written floor, same server, same run.

    .venv/bin/python bench/submit.py                      # uvicorn, 1/8/32/128 clients
    .venv/bin/python bench/submit.py --servers uvicorn,granian
    # uvicorn --workers (one shared socket) against modalkit_django.serve (a socket per
    # process, SO_REUSEPORT), alternated A B A B A B at 32 clients; prints medians:
    .venv/bin/python bench/submit.py --servers uvicorn,uvicorn-reuseport --apps project --clients 32 --rounds 3

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

Each level also records how the server's processes split the clients' connections
(``split``: established connections per process, read from ``/proc`` halfway through
the level): a process holding most of them queues while the other idles. Measuring
starts once every process has accepted a connection. With
``--rounds N`` every server and app is started N times, alternately, and the summary
gives the medians, so that a machine busy with other work biases no configuration.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BODY: dict[str, object] = {"message": {"text": "I love this film"}, "meta": {"request_id": "r-1"}}
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
    split: list[int]


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


def _sockets(pid: int, port: int) -> list[str]:
    """The TCP states (``0A`` listening, ``01`` established) of ``pid``'s sockets on local ``port``."""
    try:
        inodes = {
            target[8:-1]
            for fd in os.listdir(f"/proc/{pid}/fd")
            if (target := os.readlink(f"/proc/{pid}/fd/{fd}")).startswith("socket:[")
        }
    except OSError:  # the process ended meanwhile
        return []
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and int(fields[1].rsplit(":", 1)[1], 16) == port:
                states.append(fields[3])
    return states


def serving_pids(server_pid: int, port: int) -> list[int]:
    """The processes started by ``server_pid`` that listen on ``port``: the ones serving; or
    ``server_pid`` itself, if it serves alone (``uvicorn --workers 1`` starts no others)."""
    children = []
    for entry in os.listdir("/proc"):
        try:
            if (
                entry.isdigit()
                and int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == server_pid
            ):
                children.append(int(entry))
        except OSError:  # ended meanwhile
            continue
    return sorted(pid for pid in children if listens(pid, port)) or ([server_pid] if listens(server_pid, port) else [])


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on ``port``."""
    return "0A" in _sockets(pid, port)


def established(pid: int, port: int) -> int:
    """How many client connections on ``port`` process ``pid`` has accepted and holds."""
    return _sockets(pid, port).count("01")


async def drive(
    port: int, raw: bytes, clients: int, total: int, halfway: Callable[[], None] = lambda: None
) -> tuple[float, list[float], int, int]:
    """``clients`` keep-alive connections send ``total`` requests between them, each
    waiting for its answer before the next; ``halfway`` runs (on a thread) when half
    the requests are answered. Returns seconds, latencies, successes, errors."""
    latencies: list[float] = []
    outcome = {"ok": 0, "errors": 0}
    remaining = [total]
    sampled: list[asyncio.Future[None]] = []

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
                if len(latencies) == total // 2:
                    # Halfway, every connection open; read off the event loop, which has requests in flight.
                    sampled.append(asyncio.get_running_loop().run_in_executor(None, halfway))
                outcome["ok" if 200 <= status < 300 else "errors"] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    await asyncio.gather(*sampled)
    return time.perf_counter() - started, latencies, outcome["ok"], outcome["errors"]


def measure(
    server: str, app: str, path: str, raw: bytes, port: int, clients: int, total: int, server_pid: int = 0
) -> Level:
    split: list[int] = []
    pids = serving_pids(server_pid, port) if server_pid else []

    def record_split() -> None:
        split.extend(sorted((established(pid, port) for pid in pids), reverse=True))

    seconds, latencies, ok, errors = asyncio.run(drive(port, raw, clients, total, record_split))
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    p50, p99 = quantiles[49] * 1000, quantiles[98] * 1000
    return Level(server, app, path, clients, total, ok / seconds, p50, p99, errors, split)


def median_level(levels: list[Level], server: str, path: str, clients: int) -> Level:
    """The median of each figure over the rounds; the splits of every round, joined."""
    rounds = [lv for lv in levels if (lv.server, lv.path, lv.clients) == (server, path, clients)]
    return Level(
        server, rounds[0].app, path, clients, rounds[0].requests,
        statistics.median(lv.per_s for lv in rounds), statistics.median(lv.p50_ms for lv in rounds),
        statistics.median(lv.p99_ms for lv in rounds), sum(lv.errors for lv in rounds),
        [count for lv in rounds for count in [*lv.split, -1]][:-1],
    )  # fmt: skip


def serve(server: str, urlconf: str, port: int, processes: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    app = "project.asgi:application"
    command = {
        "uvicorn": [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
                    "--workers", str(processes), "--no-access-log", "--log-level", "warning"],
        "granian": [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
                    "--workers", str(processes), "--no-ws", "--log-level", "warning", app],
        # A listening socket per process (SO_REUSEPORT), under uvicorn's own supervisor.
        "uvicorn-reuseport": [sys.executable, "-m", "modalkit_django.serve", app, "--host", "127.0.0.1",
                              "--port", str(port), "--processes", str(processes), "--no-access-log",
                              "--log-level", "warning"],
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
    wait_until_every_process_accepts(process.pid, port, processes)
    return process


def wait_until_every_process_accepts(server_pid: int, port: int, processes: int, timeout: float = 90) -> None:
    """The port answers as soon as one process is up; on a busy machine the others may
    still be importing Django, and a measurement started then sees one process. Holds
    batches of connections until each of the ``processes`` has accepted one of them."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4 * processes)]
        try:
            time.sleep(0.2)
            pids = serving_pids(server_pid, port)
            if len(pids) >= processes and all(established(pid, port) for pid in pids):
                return
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.5)
    print(f"warning: not every one of {processes} processes accepted a connection in {timeout:.0f}s", flush=True)


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


def run_server(
    server: str, app: str, side: tuple[str, str, bytes], args: argparse.Namespace, port: int, key: str
) -> list[Level]:
    """Starts ``server`` on ``app``, warms it up, measures every client level, stops it."""
    urlconf, path, raw = side
    process = serve(server, urlconf, port, args.processes, args.env)
    levels: list[Level] = []
    try:
        measure(server, app, path, raw, port, 8, 300)  # warm both processes up
        for clients in (int(part) for part in args.clients.split(",")):
            level = measure(server, app, path, raw, port, clients, args.requests, process.pid)
            levels.append(level)
            print(
                f"{server:17} {app:10} {clients:>4} clients {level.per_s:8.0f} req/s  "
                f"p50 {level.p50_ms:6.1f} ms  p99 {level.p99_ms:6.1f} ms  errors {level.errors}  "
                f"split {'/'.join(map(str, level.split))}",
                flush=True,
            )
        if app == "project":
            predict = request_bytes("/api/predict", {"message": BODY["message"]}, key)
            levels.append(measure(server, "project", "/api/predict", predict, port, 1, 1000))
        elif app == "floor-lean":
            floor_predict = request_bytes("/api/floor/predict", {}, key)
            levels.append(measure(server, "floor", "/api/floor/predict", floor_predict, port, 1, 1000))
    finally:
        stop(process)
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="uvicorn", help="uvicorn,uvicorn-reuseport,granian")
    parser.add_argument("--apps", default="project,floor,floor-lean", help="project,floor,floor-lean")
    parser.add_argument("--clients", default="1,8,32,128")
    parser.add_argument("--requests", type=int, default=3000, help="per level")
    parser.add_argument("--processes", type=int, default=2, help="server worker processes")
    parser.add_argument("--rounds", type=int, default=1, help="start each server and app this many times, alternately")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "submit.json")
    args = parser.parse_args()
    args.env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.serve_settings",
        "DATABASE_URL": DATABASE,
        "BENCH_QUEUE": f"bench-submit-{uuid.uuid4().hex[:6]}",
    }
    key = prepare(args.env)
    body = BODY
    sides = {
        "project": ("project.urls", "/api/async/predict", request_bytes("/api/async/predict", body, key)),
        "floor": ("bench.floor", "/floor/submit", request_bytes("/floor/submit", body, None)),
        "floor-lean": ("bench.floor", "/api/floor/submit", request_bytes("/api/floor/submit", body, None)),
    }
    servers, apps = args.servers.split(","), args.apps.split(",")
    levels: list[Level] = []
    try:
        for round_ in range(args.rounds):
            for server in servers:
                for app in apps:
                    port = 18000 + round_ * 100 + len(levels) % 100
                    levels += run_server(server, app, sides[app], args, port, key)
    finally:
        import redis

        # The wake-ups no worker read: the stream is the run's own, and Redis is shared.
        redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")).delete(args.env["BENCH_QUEUE"])
    print(f"\nmedians of {args.rounds} round(s), {args.requests} requests per level; split: connections per process")
    print("server            app         clients    req/s   p50 ms   p99 ms  errors  split (rounds by ,)")
    for server in servers:
        for app in apps:
            for clients in (int(part) for part in args.clients.split(",")):
                lv = median_level(levels, server, sides[app][1], clients)
                split = "/".join(map(str, lv.split)).replace("/-1/", ", ")
                print(f"{server:17} {app:10} {clients:>8} {lv.per_s:8.0f} {lv.p50_ms:8.1f} {lv.p99_ms:8.1f} "
                      f"{lv.errors:7}  {split}")  # fmt: skip
    if {"project", "floor", "floor-lean"} <= set(apps):
        print("\nserver            clients  project req/s  floor req/s (lean path)  ratio (lean)  project p50/p99 ms")
        for server in servers:
            for clients in (int(part) for part in args.clients.split(",")):
                mine, floor, lean = (median_level(levels, server, sides[app][1], clients) for app in sides)
                print(f"{server:17} {clients:>7}  {mine.per_s:13.0f}  {floor.per_s:11.0f} ({lean.per_s:5.0f})  "
                      f"{mine.per_s / floor.per_s:5.2f} ({mine.per_s / lean.per_s:4.2f})  "
                      f"{mine.p50_ms:8.1f} / {mine.p99_ms:6.1f}")  # fmt: skip
            predict = median_level(levels, server, "/api/predict", 1)
            minimal = median_level(levels, server, "/api/floor/predict", 1)
            print(f"{server:17} sync /predict p50 {predict.p50_ms:.2f} ms vs minimal ninja + auth "
                  f"{minimal.p50_ms:.2f} ms: {predict.p50_ms - minimal.p50_ms:+.2f} ms")  # fmt: skip
    args.json.write_text(json.dumps([asdict(level) for level in levels], indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
