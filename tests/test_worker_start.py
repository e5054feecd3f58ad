"""``manage.py taskiq worker`` as operators start it: what it prints, what it refuses, what it waits for.

Real processes on a PostgreSQL and a Redis of their own (``tests/stack.py``), stopped and
started again; the assertions are on what the worker prints (line by line), its exit
status and its heartbeat rows.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings

from modalkit_django.management.commands.taskiq import Command, django_options_first

from .conftest import ROOT, wait_until
from .stack import Stack

STARTING = re.compile(
    r"Starting 1 worker process: broker redis://127\.0\.0\.1:\d+/0 \(stream [\w:-]+\); database postgresql \w+ "
    r"on 127\.0\.0\.1:\d+; models sentiment \(default\) on LocalBackend; each process runs 2 batches of up to "
    r"100 jobs at once and holds up to 400 wake-ups\."
)


def manage(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", **env}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout
    )


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def heartbeat_rows(stack: Stack) -> int:
    with psycopg.connect(stack.database_url) as db:
        row = db.execute("SELECT count(*) FROM modalkit_django_workerheartbeat").fetchone()
    assert row is not None
    return int(row[0])


def submit(stack: Stack) -> str:
    with stack.client() as client:
        response = client.post("/api/async/predict", json={"message": {"text": "a great film"}})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


# --- Refusals: exit status 1, one line, before any worker process -----------------------


@pytest.mark.django_db
def test_a_worker_without_a_broker_to_read_refuses_to_start() -> None:
    result = manage("taskiq", "worker", MODALKIT_TEST_DATABASE_NAME=connection.settings_dict["NAME"])
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "CommandError: Not starting: MODALKIT['BROKER']['URL'] is None, so jobs run inside the web process (the "
        "in-process broker) and a worker would have nothing to read. Set it to a redis://, amqp:// or nats:// URL "
        "to run workers of their own."
    ]


@pytest.mark.django_db
def test_a_worker_with_a_configuration_error_refuses_to_start_naming_the_check() -> None:
    result = manage(
        "taskiq",
        "worker",
        MODALKIT_TEST_DATABASE_NAME=connection.settings_dict["NAME"],
        MODALKIT_TEST_BROKER_URL="redis://127.0.0.1:6379/0",
        MODALKIT_TEST_PIPELINE="project.sentimnt.SentimentPipeline",
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "CommandError: Not starting: modalkit_django.E003: cannot import MODALKIT['PIPELINE'] "
        "'project.sentimnt.SentimentPipeline': No module named 'project.sentimnt'. Set MODALKIT['PIPELINE'] to the "
        "dotted path of your InferencePipeline subclass."
    ]


@pytest.mark.django_db(databases=["default", "embedded"])  # Django's JSONField check asks SQLite
def test_a_system_check_warning_is_one_line_and_the_worker_starts() -> None:
    err = io.StringIO()
    worker = {**settings.MODALKIT["WORKER"], "REQUEUE_AFTER_SECONDS": 120}
    with override_settings(MODALKIT={**settings.MODALKIT, "WORKER": worker}):
        Command(stderr=err, no_color=True).check()  # no CommandError: warnings do not stop it
    assert err.getvalue().splitlines() == [
        "Warning: modalkit_django.W004: MODALKIT['WORKER']['REQUEUE_AFTER_SECONDS'] has no effect. Remove it: "
        "workers claim runnable jobs themselves (WORKER['POLL_INTERVAL_SECONDS'])."
    ]


def test_djangos_options_are_taken_wherever_they_are() -> None:
    argv = ["manage.py", "taskiq", "worker", "--workers", "2", "--settings=mysite.settings", "--pythonpath", "/srv"]
    argv += ["-v", "2", "--traceback", "--max-async-tasks=50", "-v3", "--skip-checks"]
    assert django_options_first(argv) == [
        "manage.py",
        "taskiq",
        "--settings=mysite.settings",
        "--pythonpath",
        "/srv",
        "-v",
        "2",
        "--traceback",
        "-v3",
        "--skip-checks",
        "worker",
        "--workers",
        "2",
        "--max-async-tasks=50",
    ]
    assert django_options_first(["manage.py", "taskiq", "worker", "--", "--settings"]) == [
        "manage.py",
        "taskiq",
        "worker",
        "--",
        "--settings",
    ]


# --- Starting: one line; Redis away is said once and waited for --------------------------


@pytest.mark.e2e
def test_a_good_start_prints_one_line_and_takes_djangos_settings_option(stack: Stack) -> None:
    env = {key: value for key, value in stack.env.items() if key != "DJANGO_SETTINGS_MODULE"}
    log = stack.tmp / "worker.log"
    with log.open("w") as output:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "taskiq", "worker", "--workers", "1", "--settings=tests.settings"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stack.processes.append(worker)
        stack.start_server()
        job_id = submit(stack)
        stack.wait_settled([job_id], since=time.monotonic())
        assert stack.statuses([job_id]) == {job_id: "succeeded"}
    [line] = log_lines(log)
    assert STARTING.fullmatch(line), line
    assert heartbeat_rows(stack) == 1


@pytest.mark.e2e
def test_a_worker_started_while_redis_is_down_says_so_once_works_and_reads_redis_when_it_returns(
    stack: Stack,
) -> None:
    stack.redis.kill()
    worker = stack.start_worker()
    log = stack.tmp / "worker.log"
    stack.start_server()
    # Submits are accepted while Redis is down; the worker finds the job in the database.
    job_id = submit(stack)
    stack.wait_settled([job_id], since=time.monotonic())
    assert stack.statuses([job_id]) == {job_id: "succeeded"}
    time.sleep(4)  # long enough for what were two crashes, each a traceback and a heartbeat row
    assert worker.poll() is None
    assert heartbeat_rows(stack) == 1

    stack.redis.start()  # empty: no stream, no consumer group
    wait_until(lambda: len(log_lines(log)) >= 3, timeout=30, what="the worker to read Redis again")
    later = submit(stack)
    stack.wait_settled([later], since=time.monotonic())
    lines = log_lines(log)
    assert len(lines) == 3, lines
    assert STARTING.fullmatch(lines[0]), lines[0]
    assert lines[1] == (
        f"Redis at {stack.redis.url} does not answer (Error 111 connecting to 127.0.0.1:{stack.redis.port}. "
        "Connection refused.); retrying in the background, and running the jobs in the database meanwhile"
    )
    assert re.fullmatch(rf"Redis at {re.escape(stack.redis.url)} answers after \d+\.\ds; reading wake-ups", lines[2])
    assert heartbeat_rows(stack) == 1  # one row per process lifetime
    assert worker.poll() is None


@pytest.mark.e2e
def test_a_worker_started_before_migrate_waits_for_it(stack: Stack) -> None:
    database = stack.postgres.create_database("not_migrated")
    env = {"TEST_DATABASE_URL": database, "MODALKIT_TEST_DATABASE_NAME": "not_migrated"}
    worker = stack.start_worker(**env)
    log = stack.tmp / "worker.log"
    wait_until(lambda: log.exists() and log_lines(log), timeout=30, what="the worker to say why it waits")
    time.sleep(2)
    [line] = log_lines(log)  # said once, however long it waits
    assert re.fullmatch(
        r"The database lacks \d+ migrations \(contenttypes\.0001_initial, auth\.0001_initial, admin\.0001_initial "
        r"and \d+ more\): run `manage\.py migrate`; waiting for them",
        line,
    )
    assert worker.poll() is None

    migrate = manage("migrate", "--noinput", **{**stack.env, **env})
    assert migrate.returncode == 0, migrate.stderr
    wait_until(lambda: len(log_lines(log)) >= 3, timeout=30, what="the worker to start")
    lines = log_lines(log)
    assert re.fullmatch(r"The database is ready after \d+\.\ds; starting", lines[1]), lines
    assert STARTING.fullmatch(lines[2]), lines[2]
    assert "database postgresql not_migrated on" in lines[2]
    assert len(lines) == 3
