"""Run tests with every database connection through PgBouncer in transaction mode.

``pytest -p tests.pgbouncer …`` (``make pgbouncer`` runs the end-to-end and fault tests
so) starts a private PgBouncer (:class:`~tests.private_services.PrivatePgBouncer`) in
front of the PostgreSQL that ``TEST_DATABASE_URL`` names, before Django reads its
settings, and points ``TEST_DATABASE_URL`` at it: the test process, and the workers and
servers the tests start (they inherit the environment), connect through it. The test
database is created and migrated through it too. ``MODALKIT_TEST_PGBOUNCER=1`` tells the
test settings (:mod:`tests.settings`: the documented settings for PgBouncer) and
:class:`~tests.stack.Stack` (which puts a PgBouncer of its own in front of its private
PostgreSQL) the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from .private_services import PrivatePgBouncer

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/modalkit"

_bouncer: PrivatePgBouncer | None = None
_stats: list[dict[str, Any]] = []


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> Any:
    """Before pytest-django imports the settings (in its own hook of this name)."""
    global _bouncer
    url = urlsplit(os.environ.get("TEST_DATABASE_URL", DEFAULT_DATABASE_URL))
    _bouncer = PrivatePgBouncer(url.port or 5432, server_host=url.hostname or "127.0.0.1")
    _bouncer.start()
    netloc = f"{url.username or 'postgres'}@127.0.0.1:{_bouncer.port}"
    os.environ["TEST_DATABASE_URL"] = urlunsplit(url._replace(netloc=netloc))
    os.environ["MODALKIT_TEST_PGBOUNCER"] = "1"
    return (yield)


@pytest.fixture(scope="session", autouse=True)
def _pgbouncer_lets_go_of_the_test_database(django_db_setup: Any) -> Iterator[None]:
    """PgBouncer keeps server connections open to the test database after its clients
    leave; pytest-django's ``DROP DATABASE`` at the end would find them."""
    yield
    from django.db import connection

    assert _bouncer is not None
    _stats.extend(_bouncer.stats())  # before KILL forgets the database's
    _bouncer.release(connection.settings_dict["NAME"])


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What went through PgBouncer: proof the run used it, per database."""
    for row in _stats:
        if row["database"] != "pgbouncer":
            terminalreporter.write_line(
                f"PgBouncer (transaction mode): database {row['database']}: {row['total_xact_count']} transactions, "
                f"{row['total_query_count']} queries, clients waited {int(row['total_wait_time']) / 1e6:.1f} s in all"
            )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _bouncer is not None:
        _bouncer.stop()
