"""uvicorn in several processes, each accepting on a listening socket of its own.

    python -m modalkit_django.serve mysite.asgi:application --processes 2 --host 0.0.0.0 --port 8000

``uvicorn --workers N`` binds one socket in its parent and every process accepts from
it. Under uvloop the process that wakes first takes most new connections: at 32
keep-alive clients we saw splits of 32/0, 14/18 and 13/19, one process queueing while
the other idled. Here each process binds its own socket to the same address with
``SO_REUSEPORT``, and the Linux kernel spreads new connections across the sockets by a
hash of the client's address and port.

Supervision is uvicorn's own (:class:`uvicorn.supervisors.Multiprocess`): SIGTERM or
SIGINT stops every process gracefully (open requests finish), a process that dies is
replaced, SIGHUP replaces them one at a time, SIGTTIN and SIGTTOU add or remove one.
If a process cannot start (the application does not import, the port is taken) the
launcher stops the others and exits with status 3. Linux only: elsewhere
``SO_REUSEPORT`` does not balance; use ``uvicorn --workers`` there.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any, cast

try:
    from uvicorn import Config
    from uvicorn.supervisors import Multiprocess
except ImportError as exc:  # an optional dependency: say which, and how to get it
    raise ImportError('modalkit_django.serve runs uvicorn: pip install "modalkit-django[serve]"') from exc

__all__ = ["bind_reuseport", "main"]

logger = logging.getLogger(__name__)

# uvicorn's exit status for a process that could not start; the launcher exits with it too.
STARTUP_FAILURE = 3


def bind_reuseport(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` with ``SO_REUSEPORT``, not yet listening.

    Runs in the child process; exits it with status 3 when the address cannot be bound,
    which tells the supervisor that a restart would fail the same way.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        logger.error("Cannot bind %s:%s: %s", host, port, exc)
        sock.close()
        sys.exit(STARTUP_FAILURE)
    return sock


class _Config(Config):
    """uvicorn's configuration, where an application that raises while it is imported is a
    startup failure. uvicorn exits 1 for it (3 only for a missing module), and its
    supervisor would restart such a process for ever."""

    def load_app(self) -> Any:
        try:
            return super().load_app()
        except Exception:
            logger.exception("Error loading ASGI app %s", self.app)
            sys.exit(STARTUP_FAILURE)


class _OwnSocket:
    """What the supervisor passes each process it starts in place of a shared socket.

    uvicorn pickles a child's sockets into it when it spawns the child; this object
    unpickles as a socket the child binds itself (:func:`bind_reuseport`), so every
    process, restarted ones included, accepts on its own queue.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def __reduce__(self) -> tuple[object, tuple[str, int]]:
        return bind_reuseport, (self.host, self.port)


def ensure_free(host: str, port: int) -> None:
    """Refuses a port someone already listens on. Without this check a second launcher (or
    anything else of the same user with ``SO_REUSEPORT``) would silently share the port."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR only so that connections of a previous run in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"Cannot serve on {host}:{port}: {exc}") from None


def default_processes() -> int:
    # WEB_CONCURRENCY, as uvicorn's --workers and most platforms (Heroku, Render) read it.
    if value := os.environ.get("WEB_CONCURRENCY"):
        return int(value)
    return len(os.sched_getaffinity(0))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m modalkit_django.serve",
        description="Serve an ASGI application with uvicorn, one listening socket (SO_REUSEPORT) per process.",
    )
    parser.add_argument("app", help="the application, as module:attribute (mysite.asgi:application)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--processes", type=int, default=None, help="default: $WEB_CONCURRENCY, else the CPUs usable")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--no-access-log", dest="access_log", action="store_false")
    parser.add_argument("--backlog", type=int, default=2048, help="each socket's accept queue")
    parser.add_argument("--timeout-graceful-shutdown", type=int, default=None, metavar="SECONDS")
    parser.add_argument(
        "--forwarded-allow-ips", default=None, help="trusted proxies for X-Forwarded-* (uvicorn's option)"
    )
    args = parser.parse_args(argv)
    if args.processes is None:
        args.processes = default_processes()
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535: every process binds the same port, so 0 cannot work")
    if not sys.platform.startswith("linux"):
        parser.error("SO_REUSEPORT balances connections on Linux only; run uvicorn --workers on this system")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the launcher until SIGTERM or SIGINT; exit 3 if a process could not start."""
    args = parse_args(argv)
    ensure_free(args.host, args.port)
    config = _Config(
        args.app,
        host=args.host,
        port=args.port,
        workers=args.processes,
        log_level=args.log_level,
        access_log=args.access_log,
        backlog=args.backlog,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    supervisor = Multiprocess(config, sockets=[cast(socket.socket, _OwnSocket(args.host, args.port))])
    supervisor.run()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
