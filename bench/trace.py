"""Where a worker's batches wait: each database step's time queued for its thread and
running on it, by step. Bench only: bench/settings.py installs it when BENCH_TRACE names
a directory, before the engine imports ``run_db``; each worker process writes
``trace-<pid>.json`` there every half second.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

_steps: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # count, queued s, running s
_lock = threading.Lock()


def install(directory: str) -> None:
    from modalkit_django.worker import database

    original = database.run_db

    async def run_db(function: Any, *args: Any, **kwargs: Any) -> Any:
        submitted = time.monotonic()
        install.start_writer()  # type: ignore[attr-defined]

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return function(*args, **kwargs)
            finally:
                with _lock:
                    step = _steps[function.__name__]
                    step[0] += 1
                    step[1] += started - submitted
                    step[2] += time.monotonic() - started

        return await original(timed, *args, **kwargs)

    database.run_db = run_db  # type: ignore[assignment]

    def write() -> None:
        # Every half second: a worker process stopped by its parent does not run atexit.
        while True:
            time.sleep(0.5)
            with _lock:
                steps = json.dumps(dict(_steps))
            if _steps:
                Path(directory, f"trace-{os.getpid()}.json").write_text(steps)

    writers: set[int] = set()  # the processes writing: a thread started before a fork is not in the child

    def start_writer() -> None:
        if os.getpid() not in writers:
            writers.add(os.getpid())
            threading.Thread(target=write, daemon=True).start()

    install.start_writer = start_writer  # type: ignore[attr-defined]
