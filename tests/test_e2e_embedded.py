"""The embedded default that `make run` serves: SQLite, in-process broker, local model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .conftest import ROOT, wait_until

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_run_configuration_completes_a_job(tmp_path: Path) -> None:
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("MODALKIT_", "BROKER_URL"))},
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_DEBUG": "1",  # as make run serves it
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    env.pop("DATABASE_URL_UNUSED", None)

    def manage(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    manage("migrate", "--noinput")
    [key_line] = [line for line in manage("demo_setup").splitlines() if line.startswith("API key:")]
    api_key = key_line.removeprefix("API key: ")

    port = free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {api_key}"}) as api:

            def up() -> bool:
                try:
                    return api.get("/api/docs").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(up, timeout=30, what="the demo server")
            response = api.post(
                "/api/async/predict",
                json={"message": {"text": "I love it"}, "success_queue": "results", "meta": {"from": "test"}},
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]

            def finished() -> dict[str, object] | None:
                body = api.get(f"/api/jobs/{job_id}").json()
                done = (
                    body["status"] == "succeeded" and body["deliveries"] and body["deliveries"][0]["status"] == "sent"
                )
                return body if done else None

            body = wait_until(finished, timeout=30, what="the embedded worker to run and deliver the job")
            assert body["result"]["sentiment"] == "positive"
            assert api.post("/api/predict", json={"message": {"text": "awful"}}).json()["sentiment"] == "negative"
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
    assert "Queue results ←" in (tmp_path / "server.log").read_text()
