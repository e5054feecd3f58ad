"""Management commands: API keys, the demo setup, and the worker command's arguments."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command
from django.core.management.base import CommandError

from modalkit_django.jobs.keys import authenticate_api_key

from .conftest import ROOT

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_api_key_command_prints_a_working_key(user: Any) -> None:
    output = run("modalkit_api_key", "alice", "--name", "laptop")
    assert output.startswith("API key: mk_")
    api_key = authenticate_api_key(raw_key=output.split()[2])
    assert api_key is not None
    assert (api_key.owner, api_key.name) == (user, "laptop")
    assert api_key.allowed_queues == []  # MODALKIT["API"]["DEFAULT_ALLOWED_QUEUES"]


def test_api_key_command_grants_the_queues_it_is_given(user: Any) -> None:
    output = run("modalkit_api_key", "alice", "--allow-queue", "acme-*", "--allow-queue", "audit")
    api_key = authenticate_api_key(raw_key=output.split()[2])
    assert api_key is not None
    assert api_key.allowed_queues == ["acme-*", "audit"]


def test_api_key_command_rejects_unknown_users() -> None:
    with pytest.raises(CommandError, match="No user 'nobody'"):
        run("modalkit_api_key", "nobody")


def test_demo_setup_prints_admin_credentials_and_a_key() -> None:
    output = run("demo_setup").splitlines()
    assert output[0].startswith("Admin user: admin / ")
    password = output[0].split(" / ")[1]
    assert authenticate(username="admin", password=password) is not None
    demo_key = authenticate_api_key(raw_key=output[1].removeprefix("API key: "))
    assert demo_key is not None
    assert demo_key.allowed_queues == ["*"]  # the demo works out of the box
    # Running it again resets the password and adds a key.
    again = run("demo_setup").splitlines()
    assert authenticate(username="admin", password=again[0].split(" / ")[1]) is not None


def test_worker_command_passes_taskiq_options_through() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "taskiq", "worker", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--max-async-tasks" in result.stdout
    assert "--workers" in result.stdout


def test_worker_command_defaults_fill_the_batches_and_keep_the_log_quiet() -> None:
    from modalkit_django.management.commands.taskiq import _with_defaults

    quiet = ["--log-level", "WARNING"]
    assert _with_defaults(["--workers", "1"]) == ["--workers", "1", "--max-async-tasks", "400", *quiet]
    assert _with_defaults(["--max-async-tasks", "50"]) == ["--max-async-tasks", "50", *quiet]
    assert _with_defaults(["--max-async-tasks=50", "--log-level=INFO"]) == ["--max-async-tasks=50", "--log-level=INFO"]
