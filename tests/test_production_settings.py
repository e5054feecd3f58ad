"""The demo project's settings fail closed: DEBUG off and a real secret key unless asked.

``make run`` turns DEBUG on for itself; anything else needs ``DJANGO_SECRET_KEY``, and the
documented production environment passes ``manage.py check --deploy`` with nothing to say.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key

from .conftest import ROOT

# The production checklist of docs/how-to/deploy.md, as an environment (the host names are examples).
PRODUCTION = {
    "DJANGO_ALLOWED_HOSTS": "jobs.example.com",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://jobs.example.com",
    "DJANGO_SECURE_SSL_REDIRECT": "1",
    "DJANGO_SECURE_HSTS_SECONDS": "31536000",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "DJANGO_SECURE_HSTS_PRELOAD": "1",
    "DJANGO_SECURE_COOKIES": "1",
    "DJANGO_SECURE_PROXY_SSL_HEADER": "1",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
    "BROKER_URL": "redis://127.0.0.1:6379/0",
}

REFUSAL = "DJANGO_SECRET_KEY must be set to a secret key of your own"


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without the project's own variables, plus ``variables``.

    The test settings put a key in the environment for the processes the suite starts;
    these tests decide for themselves whether there is one.
    """
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "MODALKIT_")) and key not in {"DATABASE_URL", "BROKER_URL", "INFERENCE"}
    }
    return {**inherited, "DJANGO_SETTINGS_MODULE": "project.settings", **variables}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def load_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    """Run ``project/settings.py`` afresh under ``variables``; its module namespace."""

    def load(**variables: str) -> dict[str, Any]:
        for key in [key for key in os.environ if key.startswith("DJANGO_") and key != "DJANGO_SETTINGS_MODULE"]:
            monkeypatch.delenv(key)
        for key, value in variables.items():
            monkeypatch.setenv(key, value)
        return runpy.run_path(str(ROOT / "project" / "settings.py"))

    return load


def test_the_documented_production_environment_passes_check_deploy() -> None:
    env = environment(DJANGO_SECRET_KEY=get_random_secret_key(), **PRODUCTION)
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize(
    "variables",
    [
        {},
        {"DJANGO_DEBUG": "0"},
        {"DJANGO_SECRET_KEY": ""},
        {"DJANGO_SECRET_KEY": "django-insecure-demo-only-set-DJANGO_SECRET_KEY"},
    ],
    ids=["unset", "debug-0", "empty-key", "the-demo-key"],
)
def test_the_server_refuses_to_start_without_a_secret_key(variables: dict[str, str]) -> None:
    result = manage("check", env=environment(**variables))
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured: DEBUG is off"), result.stderr
    assert REFUSAL in last_line
    assert "export DJANGO_SECRET_KEY=" in last_line  # says how


def test_debug_is_off_by_default(load_settings: Callable[..., dict[str, Any]]) -> None:
    settings = load_settings(DJANGO_SECRET_KEY=get_random_secret_key())
    assert settings["DEBUG"] is False
    with pytest.raises(ImproperlyConfigured, match=REFUSAL):
        load_settings()


def test_debug_on_runs_with_the_demo_key(load_settings: Callable[..., dict[str, Any]]) -> None:
    settings = load_settings(DJANGO_DEBUG="1")
    assert settings["DEBUG"] is True
    assert settings["SECRET_KEY"].startswith("django-insecure-demo-only")
    assert load_settings(DJANGO_DEBUG="1", DJANGO_SECRET_KEY="mine")["SECRET_KEY"] == "mine"


def test_the_defaults_serve_plain_http(load_settings: Callable[..., dict[str, Any]]) -> None:
    settings = load_settings(DJANGO_DEBUG="1")
    assert settings["ALLOWED_HOSTS"] == ["127.0.0.1", "localhost"]
    assert settings["CSRF_TRUSTED_ORIGINS"] == []
    assert settings["SECURE_SSL_REDIRECT"] is False
    assert settings["SECURE_HSTS_SECONDS"] == 0
    assert settings["SESSION_COOKIE_SECURE"] is settings["CSRF_COOKIE_SECURE"] is False
    assert settings["SECURE_PROXY_SSL_HEADER"] is None


def test_the_production_variables_set_the_security_settings(load_settings: Callable[..., dict[str, Any]]) -> None:
    settings = load_settings(
        DJANGO_SECRET_KEY=get_random_secret_key(),
        **{
            **PRODUCTION,
            "DJANGO_ALLOWED_HOSTS": "a.example.com, b.example.com",
            "DJANGO_CSRF_TRUSTED_ORIGINS": "https://a.example.com,https://b.example.com",
        },
    )
    assert settings["ALLOWED_HOSTS"] == ["a.example.com", "b.example.com"]
    assert settings["CSRF_TRUSTED_ORIGINS"] == ["https://a.example.com", "https://b.example.com"]
    assert settings["SECURE_SSL_REDIRECT"] is True
    assert settings["SECURE_HSTS_SECONDS"] == 31536000
    assert settings["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is settings["SECURE_HSTS_PRELOAD"] is True
    assert settings["SESSION_COOKIE_SECURE"] is settings["CSRF_COOKIE_SECURE"] is True
    assert settings["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DJANGO_DEBUG", "true"), ("DJANGO_SECURE_COOKIES", "yes"), ("DJANGO_SECURE_HSTS_SECONDS", "1y")],
)
def test_a_value_that_is_not_understood_is_refused(
    variable: str, value: str, load_settings: Callable[..., dict[str, Any]]
) -> None:
    with pytest.raises(ImproperlyConfigured, match=variable):
        load_settings(DJANGO_SECRET_KEY=get_random_secret_key(), **{variable: value})


def test_make_run_turns_debug_on_for_itself() -> None:
    result = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if "manage.py" in line]
    assert [command.split("manage.py ")[1].split()[0] for command in commands] == ["migrate", "demo_setup", "runserver"]
    assert all(command.startswith("DJANGO_DEBUG=1 ") for command in commands), commands
