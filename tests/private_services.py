"""A Redis, a PostgreSQL, a PgBouncer, a NATS and a RabbitMQ of a test's own, on free
loopback ports, to kill and restart.

Fault tests stop and start these, never the shared servers the rest of the suite (and
CI) runs against. PostgreSQL and PgBouncer refuse to run as root, so when the tests run as
root they run as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import redis

__all__ = ["PrivateNats", "PrivatePgBouncer", "PrivatePostgres", "PrivateRabbitMQ", "PrivateRedis", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up in {timeout}s")
        time.sleep(0.05)


class _ServerProcess:
    """A server process of a test's own, and the folder it keeps its data in."""

    directory: str
    process: subprocess.Popen[bytes] | None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


class PrivateRedis(_ServerProcess):
    """``redis-server`` keeping nothing on disk: killed and started again, it is empty."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = tempfile.mkdtemp(prefix="modalkit-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            # A folder of its own: a replica's full sync writes an RDB file even without
            # --save, and one left in the working directory would be loaded at the next start.
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.directory,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(self.answers, "redis-server")

    def answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PrivateNats(_ServerProcess):
    """``nats-server`` with JetStream, storing in a folder of its own: killed and started
    again, it has its streams and consumers back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.directory = tempfile.mkdtemp(prefix="modalkit-nats-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.directory]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: _accepts(self.port), "nats-server")


class PrivateRabbitMQ:
    """A RabbitMQ node of its own (``rabbitmq-server``: a node name, ports, a database and
    logs of its own), started in 6 to 10 s. Killed and started again, it has its durable
    queues back. Debian's script runs the node as the ``rabbitmq`` user."""

    def __init__(self) -> None:
        self.port, self.dist_port = free_port(), free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.directory = Path(tempfile.mkdtemp(prefix="modalkit-rabbitmq-"))
        self.node = f"modalkit{self.port}@localhost"
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.directory / "enabled_plugins").write_text("[].\n")
        for name in ("mnesia", "log"):
            (self.directory / name).mkdir()
        if os.geteuid() == 0:
            for path in [self.directory, *self.directory.iterdir()]:
                shutil.chown(path, "rabbitmq", "rabbitmq")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(self.directory / "feature_flags"),
            "RABBITMQ_PID_FILE": str(self.directory / "pid"),
        }
        self.process = subprocess.Popen(
            ["rabbitmq-server"],
            cwd=self.directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait(lambda: _accepts(self.port), "rabbitmq-server", timeout=60)

    def kill(self) -> None:
        """SIGKILL to the node (and the script that started it): no clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        pid_file = self.directory / "pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
            pid_file.unlink()
        _wait(lambda: not _accepts(self.port), "rabbitmq-server to stop")

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (``initdb`` into a temporary folder, trust auth)."""

    def __init__(self) -> None:
        debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        self.bindir = Path(debian[-1] if debian else os.path.dirname(shutil.which("pg_ctl") or ""))
        self.port = free_port()
        self.datadir = Path(tempfile.mkdtemp(prefix="modalkit-pg-"))
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.datadir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.datadir} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.datadir), "-o", options, "-w", "-l", str(self.datadir / "log"), "start")
        _wait(self.answers, "postgres")

    def stop(self) -> None:
        """A fast shutdown: connections are cut, as in a restart or a failover."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")

    def pause(self) -> None:
        """Freeze every process of the cluster (SIGSTOP): connections stay open and say
        nothing, as when the database's host stalls or the network to it drops packets."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, signum: signal.Signals) -> None:
        postmaster = int((self.datadir / "postmaster.pid").read_text().split()[0])
        result = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True)
        for pid in [postmaster, *map(int, result.stdout.split())]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.url(), connect_timeout=1):
                return True
        except psycopg.Error:
            return False

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self.stop()
        shutil.rmtree(self.datadir, ignore_errors=True)


class PrivatePgBouncer:
    """``pgbouncer`` in transaction mode in front of the PostgreSQL at ``server_port``, as
    docs/how-to/pgbouncer.md configures it: every database of that server by its own name,
    trust auth, a server connection lent to a client for one transaction at a time.

    Not the system's pgbouncer service: a process of the test's own, with its ini, auth
    file, log and pid file in a temporary folder.
    """

    # The failure modes of session state under transaction pooling, as the server reports
    # them (and the client's error repeats): a statement prepared on one server connection
    # and run on another, a cursor declared on one and fetched from another.
    LOST_SESSION_STATE = re.compile(r'(?:prepared statement|cursor) "[^"]+" does not exist')

    def __init__(self, server_port: int, *, pool_size: int = 10, server_host: str = "127.0.0.1") -> None:
        if shutil.which("pgbouncer") is None:
            raise RuntimeError("pgbouncer is not installed: scripts/ensure-pgbouncer (apt-get install -y pgbouncer)")
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="modalkit-pgbouncer-"))
        (self.directory / "users.txt").write_text('"postgres" ""\n')
        (self.directory / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server_host} port={server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.directory / 'users.txt'}\nadmin_users = postgres\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\nmax_client_conn = 1000\n"
            # A restarted server is tried again after a second, not the default 15; a client
            # kept waiting 5 s for a server connection (PostgreSQL down) gets an error, which
            # the API answers with a 503, not a request held for the default 120 s.
            "server_login_retry = 1\nquery_wait_timeout = 5\n"
            f"logfile = {self.directory / 'pgbouncer.log'}\npidfile = {self.directory / 'pgbouncer.pid'}\n"
        )
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.directory, "postgres", "postgres")
            for path in self.directory.iterdir():
                shutil.chown(path, "postgres", "postgres")
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        # As the postgres user when we are root, without runuser between: a signal to the
        # process reaches pgbouncer itself.
        user = {"user": "postgres", "group": "postgres", "extra_groups": []} if self.as_postgres else {}
        self.process = subprocess.Popen(
            ["pgbouncer", str(self.directory / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **user,  # type: ignore[arg-type]
        )
        _wait(self.answers, "pgbouncer")

    def answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {self.process.returncode}:\n{self.log()}")
        try:
            self.admin("SHOW VERSION")
            return True
        except psycopg.Error:
            return False

    def connect_admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """PgBouncer's admin console. It takes simple queries only, outside transactions:
        execute ``bytes`` with ``prepare=False``."""
        return psycopg.connect(self.url("pgbouncer"), autocommit=True, connect_timeout=1)

    def admin(self, command: str) -> list[tuple[object, ...]]:
        """A command on the admin console (``SHOW POOLS``, ``KILL db``...)."""
        with self.connect_admin() as connection:
            cursor = connection.execute(command.encode(), prepare=False)
            return cursor.fetchall() if cursor.description else []

    def stats(self) -> list[dict[str, Any]]:
        """``SHOW STATS``: a row per database, its transactions, queries and waits so far."""
        with self.connect_admin() as console:
            cursor = console.execute(b"SHOW STATS", prepare=False)
            names = [column.name for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def release(self, database: str) -> None:
        """Close the server connections PgBouncer keeps open to ``database``, so that it
        can be dropped (``DROP DATABASE`` refuses while any session is connected)."""
        with contextlib.suppress(psycopg.Error):  # never connected to
            self.admin(f"KILL {database}")
            self.admin(f"RESUME {database}")

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # immediate: clients are cut, as in a crash
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)
