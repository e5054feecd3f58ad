"""Migrations after a release stop no writes to a released table, nor break its code.

The linter (``tests/migration_lint.py``) walks the unreleased migrations; each rule is
shown here to catch a synthetic migration that breaks it. The real-PostgreSQL test applies
0.1's schema, fills it, and runs ``migrate`` to the head while a session writes to the job
and delivery tables and another watches which locks the migration holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection, migrations, models
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.state import ProjectState
from django.db.models.functions import Now, Random

from modalkit_django.models import operations

from .conftest import ROOT
from .migration_lint import APP, RELEASES, Problem, last_released, lint, lint_app, unreleased

pytestmark = pytest.mark.django_db


def release_state() -> ProjectState:
    return MigrationLoader(None, ignore_no_migrations=True).project_state((APP, last_released()), at_end=True)


def lint_one(*operations_: Any, atomic: bool = True, after_deploy: bool = False, **kwargs: Any) -> list[Problem]:
    migration = migrations.Migration("0099_synthetic", APP)
    migration.operations = list(operations_)
    migration.atomic = atomic
    migration.after_deploy = after_deploy  # type: ignore[attr-defined]
    return lint([migration], release_state(), **kwargs)


def rules(problems: list[Problem]) -> list[str]:
    return [problem.rule for problem in problems]


def test_the_unreleased_migrations_stop_no_writes_to_a_released_table() -> None:
    assert lint_app() == []


def test_releases_name_migrations_on_disk_and_the_unreleased_ones_follow_the_last() -> None:
    loader = MigrationLoader(None, ignore_no_migrations=True)
    for version, name in RELEASES.items():
        assert (APP, name) in loader.disk_migrations, version
    assert [migration.name for migration in unreleased(loader)] == [
        "0002_add_for_0_2",
        "0003_add_job_columns_for_0_2",
        "0004_build_for_0_2",
        "0005_remove_after_0_2_deploy",
    ]


BAD = {
    "plain AddIndex": (
        [migrations.AddIndex("job", models.Index(fields=["message"], name="bad_idx"))],
        "index-lock",
    ),
    "plain RemoveIndex": ([migrations.RemoveIndex("job", "modalkit_job_running_idx")], "index-lock"),
    "a field added with db_index": (
        [migrations.AddField("job", "bad", models.CharField(max_length=5, null=True, db_index=True))],
        "index-lock",
    ),
    "a check added and validated at once": (
        [
            migrations.AddConstraint(
                "job", models.CheckConstraint(condition=models.Q(attempts__lt=99), name="bad_check")
            )
        ],
        "constraint-validates",
    ),
    "a unique constraint built under lock": (
        [migrations.AddConstraint("queuedelivery", models.UniqueConstraint(fields=["external_id"], name="bad_unique"))],
        "constraint-validates",
    ),
    "a positive integer column (its check scans)": (
        [migrations.AddField("job", "bad", models.PositiveIntegerField(null=True))],
        "check-scan",
    ),
    "a volatile database default (rewrite)": (
        [migrations.AddField("job", "bad", models.FloatField(db_default=Random()))],
        "volatile-default",
    ),
    "NOT NULL without a default": ([migrations.AddField("job", "bad", models.IntegerField())], "not-null-no-default"),
    "NOT NULL with a default Django drops": (
        [migrations.AddField("job", "bad", models.IntegerField(default=0))],
        "released-code-inserts",
    ),
    "a type change (rewrite)": (
        [migrations.AlterField("job", "attempts", models.BigIntegerField(default=0))],
        "alter-field",
    ),
    "SET NOT NULL (scan)": (
        [migrations.AlterField("job", "started_at", models.DateTimeField(default=Now))],
        "alter-field",
    ),
    "a released column removed before the deploy": (
        [migrations.RemoveField("job", "enqueued_at")],
        "released-code-reads",
    ),
    "RunSQL nobody reviewed": ([migrations.RunSQL("UPDATE modalkit_django_job SET meta = '{}'")], "raw"),
    "RunPython nobody reviewed": ([migrations.RunPython(migrations.RunPython.noop)], "raw"),
    "a validation in an atomic migration": (
        [operations.ValidateConstraint("job", "modalkit_job_status_valid")],
        "validate-in-atomic",
    ),
    "a concurrent build in an atomic migration": (
        [operations.AddIndexConcurrently("job", models.Index(fields=["message"], name="bad_idx"))],
        "concurrent-in-atomic",
    ),
}


@pytest.mark.parametrize("name", BAD)
def test_the_linter_catches(name: str) -> None:
    operations_, rule = BAD[name]
    assert rule in rules(lint_one(*operations_))


def test_an_index_built_then_dropped_across_unreleased_migrations_is_caught() -> None:
    index = models.Index(fields=["message"], name="short_lived_idx")
    first = migrations.Migration("0098_build", APP)
    first.operations = [operations.AddIndexConcurrently("job", index)]
    first.atomic = False
    second = migrations.Migration("0099_drop", APP)
    second.operations = [operations.RemoveIndexConcurrently("job", "short_lived_idx")]
    second.atomic = False
    assert rules(lint([first, second], release_state())) == ["built-then-dropped"]
    assert lint([first], release_state()) == []


def test_a_foreign_key_index_built_then_dropped_is_caught() -> None:
    add = migrations.AddField(
        "job", "other", models.ForeignKey("modalkit_django.job", null=True, on_delete=models.CASCADE)
    )
    drop = migrations.AlterField(
        "job", "other", models.ForeignKey("modalkit_django.job", null=True, on_delete=models.CASCADE, db_index=False)
    )
    assert "built-then-dropped" in rules(lint_one(add, drop))


def test_the_safe_forms_pass() -> None:
    assert (
        lint_one(
            operations.AddIndexConcurrently("job", models.Index(fields=["message"], name="good_idx")),
            operations.RemoveIndexConcurrently("job", "modalkit_job_running_idx"),
            operations.AddConstraintNotValid(
                "job", models.CheckConstraint(condition=models.Q(attempts__lt=99), name="good_check")
            ),
            operations.ValidateConstraint("job", "good_check"),
            operations.AddUniqueIndexConcurrently(
                "job",
                models.UniqueConstraint(
                    fields=["lease_token"], condition=models.Q(status="running"), name="good_unique"
                ),
            ),
            operations.AddFieldSafely("job", "counted", models.PositiveIntegerField(default=0), temporary_default=0),
            # now() is stable, not volatile: PostgreSQL stores the value once, no rewrite.
            migrations.AddField("job", "stamped", models.DateTimeField(db_default=Now())),
            migrations.AddField("job", "note", models.CharField(max_length=9, null=True)),
            migrations.AlterField("job", "model_name", models.CharField(max_length=200)),
            atomic=False,
        )
        == []
    )


def test_an_after_deploy_migration_may_remove_what_the_release_used() -> None:
    assert lint_one(migrations.RemoveField("job", "enqueued_at"), after_deploy=True) == []


def test_reviewed_raw_operations_pass() -> None:
    problems = lint_one(migrations.RunSQL("SELECT 1"), allowed={("0099_synthetic", "0"): "reads nothing"})
    assert problems == []


def test_tables_made_after_the_release_are_exempt() -> None:
    create = migrations.CreateModel("Fresh", [("id", models.BigAutoField(primary_key=True))])
    index = migrations.AddIndex("fresh", models.Index(fields=["id"], name="fresh_idx"))
    check = migrations.AddConstraint("fresh", models.CheckConstraint(condition=models.Q(id__gt=0), name="fresh_check"))
    assert lint_one(create, index, check) == []


# ---- on a real PostgreSQL, with rows and writers ----

# Lock modes that stop inserts and updates (they conflict with ROW EXCLUSIVE).
WRITE_BLOCKING = {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}
JOBS = 30_000
# The longest a write-blocking lock may be seen held. 0003's transaction of catalogue
# changes to the job table takes ~0.25 s at a load average of 5 on 2 cores, nearly all of
# it Django rendering its model states between the statements (each runs in ~1 ms); the
# margin is for a machine busier still.
MAX_HOLD = 1.0


def manage_env(database_url: str, name: str = "") -> dict[str, str]:
    # libpq names the session after PGAPPNAME: the watcher finds the migration's by it.
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_DEBUG": "1", "PGAPPNAME": name}
    # The demo project's settings (manage.py's default), on the database at ``database_url``.
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("BROKER_URL", None)
    return env


def manage(database_url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=manage_env(database_url),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def upgrade_database() -> Any:
    """A database of its own (``<test database>_upgrade``), at 0.1's schema with rows."""
    settings_dict = connection.settings_dict
    name = f"{settings_dict['NAME']}_upgrade"
    server = {"host": settings_dict["HOST"] or "127.0.0.1", "port": settings_dict["PORT"] or 5432}
    server["user"] = settings_dict["USER"]
    with psycopg.connect(**server, dbname="postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgres://{server['user']}@{server['host']}:{server['port']}/{name}"
    # 0.1's schema, and the other apps' (their leaves do not depend on this app).
    result = manage(
        url,
        "shell",
        "-c",
        "from django.core.management import call_command as c\n"
        f"c('migrate', '{APP}', '{last_released()}', verbosity=0)\n"
        "for app in ('admin', 'auth', 'contenttypes', 'sessions'): c('migrate', app, verbosity=0)",
    )
    assert result.returncode == 0, result.stderr
    with psycopg.connect(**server, dbname=name, autocommit=True) as db:
        db.execute(
            "INSERT INTO modalkit_django_job (id, model_name, status, message, meta, success_queue,"
            " failure_queue, attempts, reruns, created_at, finished_at) SELECT gen_random_uuid(), 'm', 'succeeded',"
            " '{}', '{}', 'q', '', 1, 0, now(), now() FROM generate_series(1, %s)",
            [JOBS],
        )
        db.execute(
            "INSERT INTO modalkit_django_queuedelivery (id, route, queue_name, backend, message_id, payload,"
            " status, attempts, last_error, external_id, created_at, job_id) SELECT gen_random_uuid(), 'success',"
            " 'q', 'default', id::text, '{}', 'sent', 1, '', '', now(), id FROM modalkit_django_job"
        )
        # 0.1's API keys could send anywhere: after the upgrade, their grant says so.
        db.execute(
            "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, is_staff,"
            " is_active, date_joined) VALUES ('!', false, 'owner', '', '', '', false, true, now())"
        )
        db.execute(
            "INSERT INTO modalkit_django_apikey (name, prefix, digest, created_at, owner_id)"
            " SELECT 'old', 'mk_old', 'digest', now(), id FROM auth_user"
        )
        db.execute("ANALYZE")
    yield url, server, name
    with psycopg.connect(**server, dbname="postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrating_a_serving_database_holds_no_write_blocking_lock(upgrade_database: Any, tmp_path: Path) -> None:
    """While ``migrate`` runs to the head on 30,000 jobs and deliveries, a watcher polls
    ``pg_locks`` every few milliseconds: the migration holds no SHARE lock (a plain
    ``CREATE INDEX``) on the job or delivery table, and no write-blocking lock for longer
    than MAX_HOLD. The previous 0002-0011 fail both here: SHARE for up to 0.8 s, ACCESS
    EXCLUSIVE for 1.1 s (0.35 s at most now, on the same loaded machine). A writer that inserts and
    updates jobs with a 2 s ``lock_timeout`` all along never times out. Before the last
    migration (after the deploy), the schema takes 0.1's inserts and 0.2 answers ready."""
    url, server, name = upgrade_database
    stop = threading.Event()
    seen: dict[tuple[int, str, str], list[tuple[float, str]]] = {}
    writes: list[float] = []
    errors: list[BaseException] = []
    deployed = threading.Event()

    def watch() -> None:
        with psycopg.connect(**server, dbname=name, autocommit=True) as db:
            tables = dict(
                db.execute(
                    "SELECT oid, relname FROM pg_class"
                    " WHERE relname IN ('modalkit_django_job', 'modalkit_django_queuedelivery')"
                ).fetchall()
            )
            while not stop.is_set():
                rows = db.execute(
                    "SELECT l.pid, l.mode, l.relation, a.query FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                    " WHERE l.granted AND l.relation = ANY(%s) AND a.application_name = 'migrate'",
                    [list(tables)],
                ).fetchall()
                now = time.monotonic()
                for pid, mode, relation, query in rows:
                    if mode in WRITE_BLOCKING:
                        seen.setdefault((pid, mode, tables[relation]), []).append((now, query[:100]))

    def write() -> None:
        try:
            with psycopg.connect(**server, dbname=name, autocommit=True) as db:
                db.execute("SET lock_timeout = '2s'")
                while not stop.is_set():
                    started = time.monotonic()
                    job = uuid.uuid4()
                    # 0.1's insert names no column 0.2 adds; 0.2's names them all.
                    db.execute(
                        "INSERT INTO modalkit_django_job (id, model_name, status, message, meta, success_queue,"
                        " failure_queue, attempts, reruns, created_at)"
                        " VALUES (%s, 'm', 'queued', '{}', '{}', '', '', 0, 0, now())"
                        if not deployed.is_set()
                        else "INSERT INTO modalkit_django_job (id, model_name, status, message, meta, success_queue,"
                        " failure_queue, attempts, reruns, created_at, idempotency_key, request_fingerprint,"
                        " api_key_prefix, priority, progress_message, output_count, runs)"
                        " VALUES (%s, 'm', 'queued', '{}', '{}', '', '', 0, 0, now(), '', '', '', 1, '', 0, 0)",
                        [job],
                    )
                    db.execute("UPDATE modalkit_django_job SET status = 'running' WHERE id = %s", [job])
                    writes.append(time.monotonic() - started)
                    time.sleep(0.005)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=watch), threading.Thread(target=write)]
    for thread in threads:
        thread.start()
    try:
        # Before the deploy, the first migration; then 0.2 answers ready (the health
        # command fails otherwise); the writer turns into 0.2 (the deploy); then the rest.
        # One process, for speed.
        ready, go = tmp_path / "ready", tmp_path / "go"
        upgrade = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "manage.py"),
                "shell",
                "-c",
                "import pathlib, time\n"
                "from django.core.management import call_command as c\n"
                f"c('migrate', '{APP}', '0004_build_for_0_2', verbosity=0)\n"
                "c('modalkit', 'health')\n"
                f"pathlib.Path('{ready}').touch()\n"
                f"while not pathlib.Path('{go}').exists(): time.sleep(0.01)\n"
                "c('migrate', verbosity=0)",
            ],
            cwd=ROOT,
            env=manage_env(url, name="migrate"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        while not ready.exists() and upgrade.poll() is None:
            time.sleep(0.01)
        deployed.set()
        time.sleep(0.05)  # an insert of 0.1's already under way ends
        go.touch()
        output, _ = upgrade.communicate(timeout=120)
        assert upgrade.returncode == 0, output
        assert ready.exists()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert not errors, errors
    assert len(writes) > 10
    with psycopg.connect(**server, dbname=name) as db:
        assert db.execute("SELECT allowed_queues FROM modalkit_django_apikey").fetchall() == [(["*"],)]
    holds = [hold for sightings in seen.values() for hold in holds_of(sightings)]
    assert holds, "the watcher saw none of the catalogue changes' brief locks"
    long_held = [(key, hold) for key, sightings in seen.items() for hold in holds_of(sightings) if hold[0] > MAX_HOLD]
    assert not long_held, long_held
    print(f"longest write-blocking hold seen: {max(hold for hold, _ in holds):.3f} s")
    assert not [key for key in seen if key[1] == "ShareLock"], seen


def holds_of(sightings: list[tuple[float, str]]) -> list[tuple[float, list[str]]]:
    """Each span of sightings with no gap of 50 ms: how long, and its statements."""
    holds: list[tuple[float, list[str]]] = []
    start = last = sightings[0][0]
    queries: list[str] = []
    for when, query in sightings:
        if when - last > 0.05:
            holds.append((last - start, queries))
            start, queries = when, []
        last = when
        if query not in queries:
            queries.append(query)
    holds.append((last - start, queries))
    return holds


def test_the_embedded_sqlite_database_migrates_forwards_back_and_forwards(tmp_path: Path) -> None:
    """The concurrent and NOT VALID operations are PostgreSQL's; on SQLite (the embedded
    default) they do what Django's plain operations do, both ways."""
    database = tmp_path / "embedded.sqlite3"
    result = manage(
        f"sqlite:///{database}",
        "shell",
        "-c",
        "from django.core.management import call_command as c\n"
        "from django.db import connection\n"
        "c('migrate', verbosity=0)\n"
        f"c('migrate', '{APP}', '{last_released()}', verbosity=0)\n"
        "c('migrate', verbosity=0)\n"
        "with connection.cursor() as cursor:\n"
        "    cursor.execute(\"SELECT name FROM sqlite_master WHERE tbl_name = 'modalkit_django_job'\")\n"
        "    print(sorted(row[0] for row in cursor.fetchall()))",
    )
    assert result.returncode == 0, result.stderr
    names = result.stdout
    for name in ("modalkit_job_priority_idx", "modalkit_job_batch_open_idx", "modalkit_job_idempotency_key_unique"):
        assert name in names
    assert "modalkit_job_queued_idx" not in names
