"""The operations that change a serving table without holding its writers
(``modalkit_django.models.operations``), each applied and reversed on PostgreSQL against
a table of the test's own, and its catalogue read back.

``tests/test_migrations.py`` holds the migrations to these forms (the linter) and watches
the locks of a real upgrade; here each operation is shown to do what it says.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import NotSupportedError, connection, models, transaction
from django.db.migrations.state import ModelState, ProjectState
from django.db.utils import load_backend

from modalkit_django.models import operations

pytestmark = [
    pytest.mark.skipif(settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql", reason="PostgreSQL"),
    pytest.mark.django_db(transaction=True),  # concurrent builds run outside a transaction
]

APP = "modalkit_django"
TABLE = "modalkit_django_scratch"


def scratch_state() -> ProjectState:
    state = ProjectState()
    state.add_model(
        ModelState(
            APP,
            "Scratch",
            [("id", models.BigAutoField(primary_key=True)), ("name", models.CharField(max_length=20))],
            options={"db_table": TABLE},
        )
    )
    return state


@pytest.fixture
def state() -> Iterator[ProjectState]:
    """A table ``modalkit_django_scratch`` with two rows, and the state that has it."""
    state = scratch_state()
    with connection.schema_editor() as editor:
        editor.create_model(state.apps.get_model(APP, "Scratch"))
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} (name) VALUES ('a'), ('b')")
    yield state
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")


def apply(operation: Any, state: ProjectState, *, backwards: bool = False, atomic: bool = False) -> ProjectState:
    """Run ``operation`` as ``migrate`` would; returns the state after it (forwards)."""
    after = state.clone()
    operation.state_forwards(APP, after)
    with connection.schema_editor(atomic=atomic) as editor:
        if backwards:
            operation.database_backwards(APP, editor, after, state)
        else:
            operation.database_forwards(APP, editor, state, after)
    return after


def index(name: str) -> tuple[bool, str] | None:
    """(valid, definition) of an index, or None."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index WHERE indexrelid = to_regclass(%s)", [name]
        )
        row = cursor.fetchone()
    return None if row is None else (bool(row[0]), str(row[1]))


def constraint(name: str) -> bool | None:
    """Whether a constraint is validated, or None when there is none."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT convalidated FROM pg_constraint WHERE conname = %s", [name])
        row = cursor.fetchone()
    return None if row is None else bool(row[0])


def column_default(column: str) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_default FROM information_schema.columns WHERE table_name = %s AND column_name = %s",
            [TABLE, column],
        )
        row = cursor.fetchone()
    assert row is not None, f"no column {column}"
    return row[0]


def test_an_index_built_and_dropped_concurrently(state: ProjectState) -> None:
    add = operations.AddIndexConcurrently("scratch", models.Index(fields=["name"], name="scratch_name_idx"))
    assert add.describe() == "Concurrently create index scratch_name_idx on scratch"
    after = apply(add, state)
    assert index("scratch_name_idx") == (True, f"CREATE INDEX scratch_name_idx ON public.{TABLE} USING btree (name)")
    apply(add, state)  # again, as a migrate that stopped before recording it: the valid index is kept
    assert index("scratch_name_idx") is not None

    remove = operations.RemoveIndexConcurrently("scratch", "scratch_name_idx")
    assert remove.describe() == "Concurrently remove index scratch_name_idx from scratch"
    apply(remove, after)
    assert index("scratch_name_idx") is None
    apply(remove, after, backwards=True)  # its reverse builds it again
    assert index("scratch_name_idx") is not None
    apply(add, state, backwards=True)
    assert index("scratch_name_idx") is None


def test_a_half_built_index_is_dropped_and_built_again(state: ProjectState) -> None:
    # What an interrupted CREATE INDEX CONCURRENTLY leaves: an index marked invalid.
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE INDEX scratch_name_idx ON {TABLE} (name)")
        cursor.execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'scratch_name_idx'::regclass"
        )  # fmt: skip
    assert index("scratch_name_idx") == (False, f"CREATE INDEX scratch_name_idx ON public.{TABLE} USING btree (name)")
    apply(operations.AddIndexConcurrently("scratch", models.Index(fields=["name"], name="scratch_name_idx")), state)
    assert index("scratch_name_idx") == (True, f"CREATE INDEX scratch_name_idx ON public.{TABLE} USING btree (name)")


def test_a_concurrent_build_refuses_to_run_in_a_transaction(state: ProjectState) -> None:
    add = operations.AddIndexConcurrently("scratch", models.Index(fields=["name"], name="scratch_name_idx"))
    needs = "AddIndexConcurrently needs a migration with atomic = False"
    with pytest.raises(NotSupportedError, match=needs), transaction.atomic():
        apply(add, state)
    assert index("scratch_name_idx") is None


def test_a_unique_index_with_a_condition_built_concurrently(state: ProjectState) -> None:
    unique = models.UniqueConstraint(fields=["name"], condition=models.Q(name__gt=""), name="scratch_name_uniq")
    add = operations.AddUniqueIndexConcurrently("scratch", unique)
    assert add.describe() == "Concurrently create unique index scratch_name_uniq on scratch"
    apply(add, state)
    assert index("scratch_name_uniq") == (
        True,
        f"CREATE UNIQUE INDEX scratch_name_uniq ON public.{TABLE} USING btree (name) WHERE ((name)::text > ''::text)",
    )
    with pytest.raises(ValueError, match="UniqueConstraint with a condition"):
        operations.AddUniqueIndexConcurrently("scratch", models.UniqueConstraint(fields=["name"], name="x"))


def test_a_check_added_not_valid_then_validated(state: ProjectState) -> None:
    check = models.CheckConstraint(condition=~models.Q(name="b"), name="scratch_not_b")
    add = operations.AddConstraintNotValid("scratch", check)
    assert add.describe() == "Create not valid constraint scratch_not_b on scratch"
    after = apply(add, state, atomic=True)
    assert constraint("scratch_not_b") is False  # the old row 'b' was not read
    with (
        pytest.raises(Exception, match="violates check constraint"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(f"INSERT INTO {TABLE} (name) VALUES ('b')")  # new rows are held to it

    validate = operations.ValidateConstraint("scratch", "scratch_not_b")
    assert validate.describe() == "Validate constraint scratch_not_b on scratch"
    assert validate.deconstruct() == ("ValidateConstraint", [], {"model_name": "scratch", "name": "scratch_not_b"})
    with pytest.raises(Exception, match="violated by some row"):
        apply(validate, after)  # the old row breaks it: validating reads them
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE name = 'b'")
    apply(validate, after)
    assert constraint("scratch_not_b") is True
    apply(validate, after, backwards=True)  # nothing to undo
    assert constraint("scratch_not_b") is True
    with pytest.raises(ValueError, match="takes a CheckConstraint"):
        operations.AddConstraintNotValid("scratch", models.UniqueConstraint(fields=["name"], name="x"))  # type: ignore[arg-type]


def test_a_column_added_without_a_rewrite_keeps_its_default_until_dropped(state: ProjectState) -> None:
    add = operations.AddFieldSafely("scratch", "runs", models.PositiveIntegerField(default=0), temporary_default=0)
    assert add.describe() == "Add field runs to scratch without a rewrite or a scan"
    assert add.deconstruct()[2]["temporary_default"] == 0
    after = apply(add, state, atomic=True)
    assert column_default("runs") == "0"  # the released code inserts rows without it
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} (name) VALUES ('c')")
        cursor.execute(f"SELECT name, runs FROM {TABLE} ORDER BY name")
        assert cursor.fetchall() == [("a", 0), ("b", 0), ("c", 0)]
    assert constraint(f"{TABLE}_runs_check") is False  # >= 0, added NOT VALID

    drop = operations.DropTemporaryDefault("scratch", "runs")
    assert drop.describe() == "Drop the temporary database default of scratch.runs"
    assert drop.deconstruct() == ("DropTemporaryDefault", [], {"model_name": "scratch", "name": "runs"})
    apply(drop, after, atomic=True)
    assert column_default("runs") is None
    apply(drop, after, backwards=True)  # nothing to undo


def test_a_column_added_safely_is_a_plain_one(state: ProjectState) -> None:
    add = operations.AddFieldSafely("scratch", "code", models.CharField(max_length=5, unique=True, default="x"))
    with pytest.raises(NotSupportedError, match="plain columns"):
        apply(add, state, atomic=True)


def test_on_sqlite_each_is_djangos_own_operation(tmp_path: Path) -> None:
    """The embedded default runs the same migrations: there, each operation does what
    Django's plain one does (SQLite has no concurrent builds and no long locks to spare)."""
    sqlite = load_backend("django.db.backends.sqlite3").DatabaseWrapper(
        {
            **connection.settings_dict,
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(tmp_path / "db.sqlite3"),
            "OPTIONS": {},
        },
        alias="default",
    )
    try:
        state = scratch_state()
        with sqlite.schema_editor() as editor:
            editor.create_model(state.apps.get_model(APP, "Scratch"))
        steps: list[Any] = [
            operations.AddIndexConcurrently("scratch", models.Index(fields=["name"], name="scratch_name_idx")),
            operations.AddUniqueIndexConcurrently(
                "scratch",
                models.UniqueConstraint(fields=["name"], condition=models.Q(name__gt=""), name="scratch_name_uniq"),
            ),
            operations.AddConstraintNotValid(
                "scratch", models.CheckConstraint(condition=~models.Q(name="b"), name="scratch_not_b")
            ),
            operations.ValidateConstraint("scratch", "scratch_not_b"),
            operations.AddFieldSafely("scratch", "runs", models.PositiveIntegerField(default=0), temporary_default=0),
            operations.DropTemporaryDefault("scratch", "runs"),
            operations.RemoveIndexConcurrently("scratch", "scratch_name_idx"),
        ]
        states = [state]
        for step in steps:
            after = states[-1].clone()
            step.state_forwards(APP, after)
            with sqlite.schema_editor() as editor:
                step.database_forwards(APP, editor, states[-1], after)
            states.append(after)
        with sqlite.cursor() as cursor:
            indexes = {row[1] for row in cursor.execute(f"PRAGMA index_list({TABLE})").fetchall()}
            columns = {row[1] for row in cursor.execute(f"PRAGMA table_info({TABLE})").fetchall()}
        assert "scratch_name_uniq" in indexes and "scratch_name_idx" not in indexes
        assert columns == {"id", "name", "runs"}
        # And back: the index comes back, then goes with its AddIndexConcurrently.
        for step, before, after in reversed(list(zip(steps, states[:-1], states[1:], strict=True))):
            with sqlite.schema_editor() as editor:
                step.database_backwards(APP, editor, after, before)
        with sqlite.cursor() as cursor:
            assert cursor.execute(f"PRAGMA index_list({TABLE})").fetchall() == []
    finally:
        sqlite.close()
