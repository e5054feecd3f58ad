"""PgBouncer in transaction mode: what docs/how-to/pgbouncer.md promises.

A server connection is lent to a client for one transaction, so anything a session keeps
between transactions (a cursor declared WITH HOLD, a prepared statement, an advisory
lock, LISTEN) may be looked for on another server connection. The first tests show the
two settings the page asks for are what keeps Django and this app clear of that, through
a real PgBouncer; the app holds no session state of its own. The last run only under
``make pgbouncer`` (``pytest -p tests.pgbouncer``), where every connection of the run, the
workers' and servers' included, goes through PgBouncer; ``make pgbouncer`` runs the
end-to-end and fault tests so too.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.contrib.contenttypes.models import ContentType
from django.core import checks
from django.db import DatabaseError, connection, connections
from django.db.migrations.loader import MigrationLoader
from django.db.utils import load_backend
from django.test import Client
from django.urls import reverse

from modalkit_django.checks import check_connection_pooler
from modalkit_django.models import ApiKey, Job, sql

from . import pgbouncer as session_bouncer
from .private_services import PrivatePgBouncer
from .test_admin_scale import make_jobs

pytestmark = [
    pytest.mark.pgbouncer,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not shutil.which("pgbouncer"), reason="pgbouncer is not installed (scripts/ensure-pgbouncer)"),
]
THROUGH_PGBOUNCER = os.environ.get("MODALKIT_TEST_PGBOUNCER") == "1"
only_through_pgbouncer = pytest.mark.skipif(
    not THROUGH_PGBOUNCER, reason="make pgbouncer runs it (pytest -p tests.pgbouncer)"
)


@pytest.fixture
def bouncer() -> Iterator[PrivatePgBouncer]:
    """The run's PgBouncer under ``make pgbouncer``; else one of the test's own in front of
    the test database's server."""
    if session_bouncer._bouncer is not None:
        yield session_bouncer._bouncer
        return
    started = PrivatePgBouncer(int(connection.settings_dict["PORT"] or 5432))
    started.start()
    yield started
    started.stop()  # its server connections go with it: the test database can be dropped


@pytest.fixture
def through(bouncer: PrivatePgBouncer) -> Iterator[Any]:
    """``through(**settings)``: the alias of a Django connection to the test database
    through ``bouncer``, with ``settings`` over the test settings (and no pool of its own)."""
    aliases: list[str] = []

    def make(**overrides: Any) -> str:
        alias = f"pgbouncer_{len(aliases)}"
        options = {key: value for key, value in connection.settings_dict["OPTIONS"].items() if key != "pool"}
        options.update(overrides.pop("OPTIONS", {}))
        settings = {**connection.settings_dict, "HOST": "127.0.0.1", "PORT": str(bouncer.port), "OPTIONS": options}
        # Made here, not in DATABASES: the test's allowed databases are the settings' aliases.
        connections[alias] = load_backend(settings["ENGINE"]).DatabaseWrapper({**settings, **overrides}, alias)
        aliases.append(alias)
        return alias

    yield make
    for alias in aliases:
        connections[alias].close()
        del connections[alias]


def another_client_holds_the_last_server_connection(bouncer: PrivatePgBouncer) -> psycopg.Connection[Any]:
    """A client in an open transaction: PgBouncer reuses server connections last-in,
    first-out, so it holds the one the previous statement ran on, until closed."""
    other = psycopg.connect(bouncer.url(connection.settings_dict["NAME"]))
    other.execute("SELECT 1")
    return other


def test_iterator_needs_disable_server_side_cursors(through: Any, bouncer: PrivatePgBouncer) -> None:
    """Django's ``QuerySet.iterator()`` declares a cursor WITH HOLD, fetched in later transactions."""
    expected = ContentType.objects.count()
    assert expected > 1
    declared = through(DISABLE_SERVER_SIDE_CURSORS=False)
    rows = ContentType.objects.using(declared).order_by("pk").iterator(chunk_size=1)
    next(rows)
    # Django's error, then psycopg's as the iterator closes the cursor it cannot find. (The
    # pattern is the one the stacks and workers' logs are searched for.)
    with (
        another_client_holds_the_last_server_connection(bouncer),
        pytest.raises((DatabaseError, psycopg.Error), match=PrivatePgBouncer.LOST_SESSION_STATE.pattern) as lost,
    ):
        next(rows)
    assert '"_django_curs_' in str(lost.value)
    # psycopg's cursor object, which nothing could close, goes quietly.
    del lost, rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()

    fetched = through(DISABLE_SERVER_SIDE_CURSORS=True)
    rows = ContentType.objects.using(fetched).order_by("pk").iterator(chunk_size=1)
    next(rows)
    with another_client_holds_the_last_server_connection(bouncer):
        assert 1 + len(list(rows)) == expected


def test_the_apps_own_statements_need_no_prepared_statements(through: Any, bouncer: PrivatePgBouncer) -> None:
    """The hot statements (models/sql.py) bind parameters server-side; psycopg prepares them
    only past ``prepare_threshold``. PgBouncer 1.18 keeps no prepared statement across
    server connections."""
    tokens = [uuid.uuid4()]
    prepared = through(OPTIONS={"prepare_threshold": 0})  # prepared at the first execution
    sql.renew_leases(Job, tokens, lease_seconds=30, using=prepared)
    with (
        another_client_holds_the_last_server_connection(bouncer),
        pytest.raises(DatabaseError, match=PrivatePgBouncer.LOST_SESSION_STATE.pattern) as lost,
    ):
        sql.renew_leases(Job, tokens, lease_seconds=30, using=prepared)
    assert 'prepared statement "_pg3_' in str(lost.value)

    unprepared = through()  # Django's default, prepare_threshold None
    assert connections[unprepared].get_connection_params()["prepare_threshold"] is None
    sql.renew_leases(Job, tokens, lease_seconds=30, using=unprepared)
    with another_client_holds_the_last_server_connection(bouncer):
        assert sql.renew_leases(Job, tokens, lease_seconds=30, using=unprepared) == []


def test_pgbouncer_carries_the_time_zone_django_sets(bouncer: PrivatePgBouncer) -> None:
    """Django sets the session's time zone on a new connection when the server's differs
    from ``TIME_ZONE``; PgBouncer keeps it per client and sets it on whichever server
    connection it lends that client."""
    with psycopg.connect(bouncer.url(connection.settings_dict["NAME"]), autocommit=True) as client:
        client.execute("SET TIME ZONE 'America/New_York'")
        with another_client_holds_the_last_server_connection(bouncer) as other:
            [[elsewhere]] = client.execute("SELECT current_setting('TimeZone')").fetchall()
            [[held]] = other.execute("SELECT current_setting('TimeZone')").fetchall()
    assert elsewhere == "America/New_York"  # on another server connection, set again
    assert held != "America/New_York"  # and the server connection it was set on was reset


# What a session keeps between transactions, as it would be written in this app's code.
SESSION_STATE = re.compile(
    r"pg_(?:try_)?advisory_lock|pg_advisory_unlock|\bLISTEN\b|pg_notify|\bNOTIFY\b|CREATE TEMP|TEMPORARY TABLE"
    r"|[\"']SET (?!LOCAL\b)|set_config\(|WITH HOLD|\.iterator\(|prepare=True",
)


def test_the_app_keeps_nothing_in_the_database_session() -> None:
    package = Path(__file__).resolve().parent.parent / "modalkit_django"
    found = [
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if "migrations" not in path.parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SESSION_STATE.search(line)
    ]
    assert found == []
    assert SESSION_STATE.search("SELECT pg_try_advisory_lock(42)")  # the pattern itself finds what it should
    assert SESSION_STATE.search('execute("SET statement_timeout = 0")')
    assert not SESSION_STATE.search('execute("SET LOCAL lock_timeout = 1")')
    assert not SESSION_STATE.search('"UPDATE job SET status = 2"')


def test_w006_a_pooler_with_server_side_cursors_on(through: Any) -> None:
    cursors = through(DISABLE_SERVER_SIDE_CURSORS=False)
    prepares = through(DISABLE_SERVER_SIDE_CURSORS=True, OPTIONS={"prepare_threshold": 5})
    [warning] = check_connection_pooler(databases=[cursors])
    assert (warning.id, warning.level) == ("modalkit_django.W006", checks.WARNING)
    assert f"'{cursors}'" in warning.msg and "DISABLE_SERVER_SIDE_CURSORS is off" in warning.msg
    [warning] = check_connection_pooler(databases=[prepares])
    assert "prepare_threshold" in warning.msg and "DISABLE_SERVER_SIDE_CURSORS" not in warning.msg
    # Registered as a database check: `manage.py migrate` and `check --database` run it.
    assert "modalkit_django.W006" in {message.id for message in checks.run_checks(databases=[cursors])}

    assert check_connection_pooler(databases=[through(DISABLE_SERVER_SIDE_CURSORS=True)]) == []


@pytest.mark.skipif(THROUGH_PGBOUNCER, reason="the test database is behind PgBouncer in this run")
def test_w006_not_on_a_direct_connection() -> None:
    assert not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
    assert check_connection_pooler(databases=["default"]) == []
    assert check_connection_pooler(databases=None) == []  # `manage.py check` without --database


@only_through_pgbouncer
def test_this_run_reaches_its_database_through_pgbouncer(bouncer: PrivatePgBouncer) -> None:
    assert int(connection.settings_dict["PORT"]) == bouncer.port
    assert connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] is True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        [server_pid] = cursor.fetchone()
    assert connection.connection.info.backend_pid != server_pid  # PgBouncer's made-up pid
    # The test database was created and migrated through it (pytest-django's migrate).
    leaves = MigrationLoader(None, ignore_no_migrations=True).graph.leaf_nodes("modalkit_django")
    applied = set(connection.cursor().execute("SELECT app, name FROM django_migrations").fetchall())
    assert leaves and set(leaves) <= applied
    assert check_connection_pooler(databases=["default"]) == []  # the documented settings


@only_through_pgbouncer
def test_the_admin_through_pgbouncer(admin_client: Client, django_capture_on_commit_callbacks: Any) -> None:
    """Outside a test's transaction: every statement of the admin's pages in a transaction
    of its own, each on whichever server connection PgBouncer lends."""
    jobs = reverse("admin:modalkit_django_job_changelist")
    queued = make_jobs(300, status="queued", failure_queue="failures")
    assert admin_client.get(jobs).status_code == 200
    assert admin_client.get(f"{jobs}?status__exact=queued&q=sentiment").status_code == 200
    selection = {"action": "cancel_jobs", "select_across": "1", "_selected_action": [str(queued[0].id)], "post": "yes"}
    with django_capture_on_commit_callbacks(execute=True):
        assert admin_client.post(f"{jobs}?status__exact=queued", selection).status_code == 302
    assert Job.objects.filter(status="canceled").count() == 300
    assert admin_client.get(reverse("admin:modalkit_django_job_change", args=[queued[0].id])).status_code == 200
    # A form with a choice of rows (the key's owner): Django's ModelChoiceIterator reads
    # them with QuerySet.iterator(), after the view's transaction.
    assert admin_client.get(reverse("admin:modalkit_django_apikey_add")).status_code == 200
    assert ApiKey.objects.count() == 0
