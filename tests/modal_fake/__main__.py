"""Run the fake as a process: ``python -m tests.modal_fake --register APP:CLS=module:attr``.

Prints ``LISTENING http://127.0.0.1:PORT`` on stdout once it serves, then
``STATS http://127.0.0.1:BLOBPORT/stats`` (JSON counters; ``POST .../reset`` zeroes
them), and serves until SIGTERM or SIGINT. Point clients at it with the variables from
``tests.modal_fake.client_env(url)``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from .env import NO_CONFIG_PATH, apply_client_env

logger = logging.getLogger("tests.modal_fake")


def _registration(spec: str) -> tuple[str, str, str]:
    """``APP:CLS=module:attr`` → (app, cls, target)."""
    try:
        name, target = spec.split("=", 1)
        app_name, cls_name = name.split(":", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected APP:CLS=module:attr, got {spec!r}") from None
    return app_name, cls_name, target


def _load(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.modal_fake", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="gRPC port (0: any free port)")
    parser.add_argument("--blob-port", type=int, default=0, help="blob and /stats HTTP port (0: any)")
    parser.add_argument("--register", type=_registration, action="append", default=[], metavar="APP:CLS=module:attr")
    parser.add_argument("--parallelism", type=int, default=8, help="batches of one method running at once")
    parser.add_argument("--stats-file", type=Path, help="write the final counters here as JSON on exit")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status."""
    args = _arguments(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # modal reads its config file at import: keep a developer's ~/.modal.toml out.
    os.environ.setdefault("MODAL_CONFIG_PATH", str(NO_CONFIG_PATH))
    from .server import FakeModal

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    with FakeModal(args.host, args.port, blob_port=args.blob_port, parallelism=args.parallelism) as fake:
        # User code that calls Modal itself (e.g. Volume.reload()) reaches this fake too.
        apply_client_env(fake.url)
        for app_name, cls_name, target in args.register:
            fake.register_cls(app_name, cls_name, _load(target))
        sys.stdout.write(f"LISTENING {fake.url}\nSTATS {fake.blob_base_url}/stats\n")
        sys.stdout.flush()
        stop.wait()
        stats = fake.stats_json()
    logger.info("modal fake stopped; stats: %s", json.dumps(stats))
    if args.stats_file:
        args.stats_file.write_text(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
