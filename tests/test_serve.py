"""``python -m modalkit_django.serve``, run as its users run it: a real launcher process
with two uvicorn processes serving the demo project, each on a socket of its own."""

from __future__ import annotations

import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.submit import established, listens, serving_pids
from modalkit_django import serve

from .conftest import ROOT
from .private_services import free_port


class Launcher:
    def __init__(self, tmp: Path, *args: str, **extra_env: str) -> None:
        self.port = free_port()
        self.log = tmp / "serve.log"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            # A Redis broker: no embedded worker in the web processes, so /health needs nothing else.
            "MODALKIT_TEST_BROKER_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            "MODALKIT_TEST_BROKER_QUEUE": f"modalkit-test-serve-{uuid.uuid4().hex[:6]}",
            **extra_env,
        }
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modalkit_django.serve", *args, "--port", str(self.port), "--no-access-log"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"the launcher exited ({self.process.returncode}): {self.output()}"
            assert time.monotonic() < deadline, f"{what}, after {timeout}s: {self.output()}"
            time.sleep(0.2)

    def serving(self) -> list[int]:
        return serving_pids(self.process.pid, self.port)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    started = Launcher(tmp_path, "project.asgi:application", "--processes", "2")
    try:
        started.wait_for(lambda: len(started.serving()) == 2, "two processes did not start listening")
        yield started
    finally:
        started.stop()


def get_health(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = b""
    while b'{"status": "ok"}' not in answer:
        chunk = sock.recv(4096)
        assert chunk, answer
        answer += chunk
    return answer


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_each_process_accepts_on_a_socket_of_its_own(launcher: Launcher) -> None:
    # uvicorn --workers binds one socket in the parent and shares it; here the parent holds none.
    assert not listens(launcher.process.pid, launcher.port)
    connections = [socket.create_connection(("127.0.0.1", launcher.port), timeout=30) for _ in range(40)]
    try:
        for sock in connections:
            assert get_health(sock).startswith(b"HTTP/1.1 200 OK")
        split = {pid: established(pid, launcher.port) for pid in launcher.serving()}
    finally:
        for sock in connections:
            sock.close()
    # The kernel spread the 40 connections over both sockets (all on one: odds 2 in 2**40).
    assert sum(split.values()) == 40, split
    assert all(count > 0 for count in split.values()), split


def test_static_files_answer_through_the_production_server(launcher: Launcher) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{launcher.port}", timeout=30) as client:
        admin_css = client.get("/static/admin/css/base.css")
        docs = client.get("/api/docs")
        [docs_css] = re.findall(r'href="([^"]+\.css)"', docs.text)
        docs_css_answer = client.get(docs_css)
    assert (admin_css.status_code, admin_css.headers["Content-Type"]) == (200, 'text/css; charset="utf-8"')
    assert docs.status_code == 200
    assert docs_css.startswith("/static/")  # "ninja" is installed: no CDN
    assert (docs_css_answer.status_code, docs_css_answer.headers["Content-Type"].split(";")[0]) == (200, "text/css")


def children_of(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in result.stdout.split()]


def test_sigterm_stops_every_process_gracefully(launcher: Launcher) -> None:
    children = children_of(launcher.process.pid)  # the servers and multiprocessing's resource tracker
    assert set(launcher.serving()) < set(children)
    os.kill(launcher.process.pid, signal.SIGTERM)
    assert launcher.process.wait(timeout=30) == 0, launcher.output()
    # No orphans. multiprocessing's resource tracker leaves when it reads its pipe's end,
    # a moment after the launcher.
    deadline = time.monotonic() + 10
    while (left := [pid for pid in children if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]
    assert "Finished server process" in launcher.output()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", launcher.port))  # nothing holds the port any more


def test_a_killed_process_is_replaced(launcher: Launcher) -> None:
    killed, survivor = launcher.serving()
    os.kill(killed, signal.SIGKILL)
    launcher.wait_for(lambda: len(set(launcher.serving()) - {killed}) == 2, "no process replaced the killed one")
    assert survivor in launcher.serving()
    with socket.create_connection(("127.0.0.1", launcher.port), timeout=30) as sock:
        assert get_health(sock).startswith(b"HTTP/1.1 200 OK")


def test_an_application_that_does_not_import_stops_the_launcher(tmp_path: Path) -> None:
    failed = Launcher(tmp_path, "project.no_such_module:application", "--processes", "2")
    try:
        assert failed.process.wait(timeout=60) == 3, failed.output()
    finally:
        failed.stop()
    assert "project.no_such_module" in failed.output()


def test_an_application_that_raises_on_import_stops_the_launcher(tmp_path: Path) -> None:
    (tmp_path / "broken_asgi.py").write_text("raise RuntimeError('the settings are wrong')\n")
    failed = Launcher(tmp_path, "broken_asgi:application", "--processes", "2", PYTHONPATH=str(tmp_path))
    try:
        assert failed.process.wait(timeout=60) == 3, failed.output()
    finally:
        failed.stop()
    assert "RuntimeError: the settings are wrong" in failed.output()


def test_a_port_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "modalkit_django.serve", "project.asgi:application", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"Cannot serve on 127.0.0.1:{port}" in result.stderr


# --- The launcher's parts, in this process ---------------------------------------------


def test_each_process_binds_the_same_port_with_a_socket_of_its_own() -> None:
    port = free_port()
    first = serve.bind_reuseport("127.0.0.1", port)
    # What a child unpickles in place of the shared socket: a second socket on the same port.
    second = pickle.loads(pickle.dumps(serve._OwnSocket("127.0.0.1", port)))
    try:
        assert isinstance(second, socket.socket)
        assert first.getsockname() == second.getsockname() == ("127.0.0.1", port)
        assert second.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    finally:
        first.close()
        second.close()


def test_a_port_someone_listens_on_is_refused_before_any_process_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"Cannot serve on 127.0.0.1:{port}"):
            serve.ensure_free("127.0.0.1", port)
        # A child that cannot bind exits 3: the supervisor must not restart it for ever.
        with pytest.raises(SystemExit) as exited:
            serve.bind_reuseport("127.0.0.1", port)
        assert exited.value.code == serve.STARTUP_FAILURE


def test_an_application_that_raises_on_import_is_a_startup_failure(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('no settings')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        serve._Config("broken_app:application").load_app()
    assert exited.value.code == serve.STARTUP_FAILURE


def test_arguments(monkeypatch: Any) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    args = serve.parse_args(["mysite.asgi:application", "--port", "9000", "--no-access-log"])
    assert (args.app, args.processes, args.port, args.access_log) == ("mysite.asgi:application", 3, 9000, False)
    monkeypatch.delenv("WEB_CONCURRENCY")
    assert serve.parse_args(["app:app"]).processes == len(os.sched_getaffinity(0))
    for wrong in (["app:app", "--processes", "0"], ["app:app", "--port", "0"]):
        with pytest.raises(SystemExit) as exited:
            serve.parse_args(wrong)
        assert exited.value.code == 2
