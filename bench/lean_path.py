"""CPU per API request on the lean ASGI path, in-process: no server, no client, no database.

    .venv/bin/python bench/lean_path.py

Calls ``modalkit_django.asgi.get_asgi_application()`` with ``GET /api/jobs/<uuid>`` and no
key (a 401: URL resolution, the lean handler, authentication, the error answer), 2,000
times a round, 7 rounds, and prints the median and the fastest round in microseconds per
request. Run it on two checkouts to compare them; the fastest round is the least disturbed
by other work on the machine.
"""

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.serve_settings")
os.environ.setdefault("BENCH_QUEUE", "bench-lean-path")

from modalkit_django.asgi import get_asgi_application  # noqa: E402

SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/api/jobs/3f0c6a54-1d8e-4a5e-9a51-1c2b3d4e5f60",
    "raw_path": b"",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"127.0.0.1")],
    "client": ("127.0.0.1", 1),
    "server": ("127.0.0.1", 8000),
}


async def main() -> None:
    application = get_asgi_application()
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    for _ in range(300):  # warm up
        await application(dict(SCOPE), receive, send)
    rounds = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(2000):
            await application(dict(SCOPE), receive, send)
        rounds.append((time.perf_counter() - started) / 2000 * 1e6)
    assert statuses == {401}, statuses
    print(f"median {statistics.median(rounds):.0f} µs/request, fastest round {min(rounds):.0f} µs/request")


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)  # Django logs each 401
    asyncio.run(main())
