"""A linter for the migrations a release adds: none may stop writes to a released table.

Tables that exist in a release (the job and delivery tables hold millions of rows) serve
while ``migrate`` runs. The linter walks every operation after the last released migration
(``RELEASES``) and names each one that would hold such a table, or break the released code
that still runs until the deploy:

- ``index-lock``: an index built or dropped without ``CONCURRENTLY`` (``AddIndex``,
  ``RemoveIndex``, a field added with ``db_index``/``unique``).
- ``constraint-validates``: a constraint added and validated at once (a check without
  ``NOT VALID``; a unique constraint that is not a concurrently built unique index).
- ``check-scan``: a column added with a check (a positive integer's ``>= 0``), which
  PostgreSQL verifies by reading every row under an exclusive lock.
- ``volatile-default``: a column added with a volatile database default (``random()``,
  ``clock_timestamp()``, …): PostgreSQL rewrites the table. A stable one (``Now()``,
  which is ``statement_timestamp()``) or a constant is stored once, no rewrite.
- ``not-null-no-default``: a ``NOT NULL`` column with no default: the old rows fail it.
- ``released-code-inserts``: a ``NOT NULL`` column with no database default before the
  deploy: the released code, which does not write it, can no longer insert rows.
- ``alter-field``: a type change (rewrite), ``SET NOT NULL`` (scan), or a new index or
  check on an existing column.
- ``released-code-reads``: a column or table the released code uses, removed or renamed
  outside a migration marked ``after_deploy = True``.
- ``raw``: ``RunSQL``/``RunPython``, unless allowed with a reason (``ALLOWED``): what they
  touch cannot be told from outside.
- ``concurrent-in-atomic``: a concurrent operation in a migration without ``atomic = False``.
- ``validate-in-atomic``: ``ValidateConstraint`` in a transaction, which keeps the
  exclusive locks of the operations before it while it reads the table.
- ``built-then-dropped``: an index built and dropped again within the unreleased migrations.

Tables a new migration creates are exempt (they are empty), except for the last four.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.db import connection, migrations, models
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import ProjectState
from django.db.models.sql import Query

APP = "modalkit_django"

# Each release, and the last migration of the app it shipped. Move the line at each release.
RELEASES = {"0.1.0": "0001_initial"}

# RunPython/RunSQL reviewed by hand: (migration, operation's position) -> why it holds nothing.
ALLOWED = {
    ("0005_remove_after_0_2_deploy", "10.0"): "DROP INDEX CONCURRENTLY of the job owner's foreign-key index",
    ("0005_remove_after_0_2_deploy", "11"): "DROP INDEX CONCURRENTLY of the delivery message_id LIKE index",
}

CONCURRENT = ("AddIndexConcurrently", "RemoveIndexConcurrently", "AddUniqueIndexConcurrently")
SAFE_CONSTRAINTS = ("AddConstraintNotValid", "AddUniqueIndexConcurrently")


@dataclass(frozen=True)
class StateOnly:
    """An ``AlterField`` of a ``SeparateDatabaseAndState``'s state: checked for a dropped index only."""

    operation: migrations.AlterField


@dataclass(frozen=True)
class Problem:
    migration: str
    position: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.migration} #{self.position} [{self.rule}] {self.message}"


def last_released() -> str:
    return list(RELEASES.values())[-1]


def unreleased(loader: MigrationLoader) -> list[migrations.Migration]:
    """The app's migrations after the last release, in the order ``migrate`` applies them."""
    leaf = loader.graph.leaf_nodes(APP)[0]
    plan = [node for node in loader.graph.forwards_plan(leaf) if node[0] == APP]
    names = [name for _, name in plan]
    after = names[names.index(last_released()) + 1 :]
    return [loader.get_migration(APP, name) for name in after]


def lint_app() -> list[Problem]:
    loader = MigrationLoader(None, ignore_no_migrations=True)
    state = loader.project_state((APP, last_released()), at_end=True)
    return lint(unreleased(loader), state)


def released_models(state: ProjectState) -> set[str]:
    return {name for app, name in state.models if app == APP}


def walk(
    operations: Iterable[Operation], state: ProjectState, prefix: str = ""
) -> Iterator[tuple[str, Operation, ProjectState]]:
    """Each operation that touches the database, with the state before it; the state moves on."""
    for index, operation in enumerate(operations):
        position = f"{prefix}{index}"
        if isinstance(operation, migrations.SeparateDatabaseAndState):
            yield from walk(operation.database_operations, state.clone(), f"{position}.")
            for state_operation in operation.state_operations:
                if isinstance(state_operation, migrations.AlterField):
                    # Not run, but it says which index the database operations drop.
                    yield position, StateOnly(state_operation), state
                state_operation.state_forwards(APP, state)
            continue
        yield position, operation, state
        operation.state_forwards(APP, state)


def lint(
    unreleased_migrations: Iterable[migrations.Migration],
    state: ProjectState,
    allowed: dict[tuple[str, str], str] | None = None,
) -> list[Problem]:
    """The problems of ``unreleased_migrations``, applied in order to ``state``, the state of
    the last release (whose tables and columns are the ones that serve)."""
    allowed = ALLOWED if allowed is None else allowed
    released = released_models(state)
    released_fields = {
        (model, field)
        for (app, model), model_state in state.models.items()
        if app == APP
        for field in model_state.fields
    }
    state = state.clone()
    problems: list[Problem] = []
    built_indexes: dict[str, str] = {}
    indexed_fields: dict[tuple[str, str], str] = {}
    for migration in unreleased_migrations:
        after_deploy = getattr(migration, "after_deploy", False)
        for position, operation, before in walk(migration.operations, state):

            def problem(rule: str, message: str, position: str = position, migration: Any = migration) -> None:
                problems.append(Problem(migration.name, position, rule, message))

            if isinstance(operation, StateOnly):
                dropped_field_index(operation.operation, before, indexed_fields, problem)
                continue
            kind = type(operation).__name__
            if kind in CONCURRENT and migration.atomic:
                problem("concurrent-in-atomic", f"{kind} needs a migration with atomic = False")
            if kind == "ValidateConstraint" and migration.atomic:
                problem("validate-in-atomic", "in a transaction, the scan keeps the locks taken before it")
            if isinstance(operation, migrations.RunPython | migrations.RunSQL):
                if (migration.name, position) not in allowed:
                    problem("raw", f"{kind} is not in ALLOWED (add it with the reason it holds no table)")
                continue
            for name in created_indexes(operation):
                built_indexes[name] = migration.name
            for name in dropped_indexes(operation):
                if name in built_indexes:
                    problem("built-then-dropped", f"index {name} is built in {built_indexes[name]} and dropped here")
            model = getattr(operation, "model_name_lower", None) or getattr(operation, "name_lower", None)
            if isinstance(operation, migrations.AddField) and (operation.field.db_index or operation.field.unique):
                indexed_fields[operation.model_name_lower, operation.name_lower] = migration.name
            if isinstance(operation, migrations.AlterField):
                dropped_field_index(operation, before, indexed_fields, problem)
            if model not in released:
                continue
            for rule, message in released_table_problems(operation, before, after_deploy, released_fields):
                problem(rule, message)
    return problems


def dropped_field_index(
    operation: migrations.AlterField, before: ProjectState, indexed_fields: dict[tuple[str, str], str], problem: Any
) -> None:
    old = before.models[APP, operation.model_name_lower].get_field(operation.name)
    key = (operation.model_name_lower, operation.name_lower)
    if old.db_index and not operation.field.db_index and key in indexed_fields:
        problem("built-then-dropped", f"{operation.name}'s index is built in {indexed_fields[key]} and dropped here")


def created_indexes(operation: Operation) -> list[str]:
    if isinstance(operation, migrations.AddIndex):
        return [operation.index.name]
    if isinstance(operation, migrations.AddConstraint) and isinstance(operation.constraint, models.UniqueConstraint):
        return [operation.constraint.name]
    if isinstance(operation, migrations.CreateModel):
        indexes = [index.name for index in operation.options.get("indexes", [])]
        return indexes + [
            c.name for c in operation.options.get("constraints", []) if isinstance(c, models.UniqueConstraint)
        ]
    return []


def dropped_indexes(operation: Operation) -> list[str]:
    if isinstance(operation, migrations.RemoveIndex | migrations.RemoveConstraint):
        return [operation.name]
    return []


def volatile_functions(sql: str) -> list[str]:
    """The functions in ``sql`` that PostgreSQL itself marks volatile (``pg_proc.provolatile``)."""
    names = sorted({name.lower() for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", sql)})
    if not names:
        return []
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT proname FROM pg_proc WHERE proname = ANY(%s) AND provolatile = 'v'", [names])
        return sorted(row[0] for row in cursor.fetchall())


def released_table_problems(
    operation: Operation, before: ProjectState, after_deploy: bool, released_fields: set[tuple[str, str]]
) -> Iterator[tuple[str, str]]:
    kind = type(operation).__name__
    if isinstance(operation, migrations.AddIndex | migrations.RemoveIndex) and kind not in CONCURRENT:
        yield "index-lock", f"{kind} holds writes while it builds or drops: use its Concurrently form"
    elif isinstance(operation, migrations.AddConstraint) and kind not in SAFE_CONSTRAINTS:
        yield (
            "constraint-validates",
            f"{kind} reads every row under a lock: add it NOT VALID (checks) or as a concurrent unique index",
        )
    elif isinstance(operation, migrations.AddField):
        yield from added_field_problems(operation, kind, after_deploy)
    elif isinstance(operation, migrations.AlterField):
        old = bound(before.models[APP, operation.model_name_lower].get_field(operation.name), operation.name)
        new = bound(operation.field, operation.name)
        # A foreign key's type is its target's (not renderable here); its other changes are checked.
        relation = old.is_relation or new.is_relation
        old_params = {"type": None, "check": None} if relation else old.db_parameters(connection)
        new_params = {"type": None, "check": None} if relation else new.db_parameters(connection)
        if old_params["type"] != new_params["type"] and not longer_varchar(old_params["type"], new_params["type"]):
            yield (
                "alter-field",
                f"{operation.name}: type {old_params['type']} -> {new_params['type']} rewrites the table",
            )
        if old.null and not new.null:
            yield "alter-field", f"{operation.name}: SET NOT NULL reads every row under an exclusive lock"
        if (new.db_index and not old.db_index) or (new.unique and not old.unique):
            yield "index-lock", f"{operation.name}: a new index built without CONCURRENTLY"
        if new_params["check"] and new_params["check"] != old_params["check"]:
            yield "check-scan", f"{operation.name}: a new check reads every row under an exclusive lock"
    elif isinstance(operation, migrations.RemoveField | migrations.RenameField) and not after_deploy:
        name = operation.name if isinstance(operation, migrations.RemoveField) else operation.old_name
        if (operation.model_name_lower, name.lower()) in released_fields:
            yield (
                "released-code-reads",
                f"{kind} removes what the released code reads: do it in an after_deploy migration",
            )
    elif (
        isinstance(operation, migrations.DeleteModel | migrations.RenameModel | migrations.AlterModelTable)
        and not after_deploy
    ):
        yield "released-code-reads", f"{kind} removes what the released code reads: do it in an after_deploy migration"


def longer_varchar(old: str, new: str) -> bool:
    """``varchar(n)`` to a longer ``varchar``: PostgreSQL changes the catalogue only."""
    lengths = [re.fullmatch(r"varchar\((\d+)\)", type_) for type_ in (old, new)]
    return all(lengths) and int(lengths[1][1]) >= int(lengths[0][1])  # type: ignore[index]


def bound(field: Any, name: str) -> Any:
    """A copy of a migration's field that knows its column (its check names it)."""
    field = field.clone()
    field.set_attributes_from_name(name)
    return field


def added_field_problems(operation: migrations.AddField, kind: str, after_deploy: bool) -> Iterator[tuple[str, str]]:
    field = bound(operation.field, operation.name)
    safely = kind == "AddFieldSafely"
    if field.db_index or field.unique:
        yield (
            "index-lock",
            f"{operation.name}: its index is built without CONCURRENTLY (db_index=False, then AddIndexConcurrently)",
        )
    if field.db_check(connection) and not safely:
        yield "check-scan", f"{operation.name}: its check reads every row under an exclusive lock: use AddFieldSafely"
    has_db_default = field.db_default is not models.NOT_PROVIDED
    if has_db_default:
        query = Query(None)
        sql, _ = query.get_compiler(connection=connection).compile(field.db_default.resolve_expression(query))
        if volatile := volatile_functions(sql):
            yield (
                "volatile-default",
                f"{operation.name}: the volatile default ({', '.join(volatile)}) rewrites the table",
            )
    if field.null or has_db_default:
        return
    temporary = getattr(operation, "temporary_default", None)
    # Django fills a blank text column's old rows with "" when it has no default.
    filled = field.has_default() or (field.blank and field.empty_strings_allowed)
    if not filled and temporary is None:
        yield "not-null-no-default", f"{operation.name}: NOT NULL with no default fails on the existing rows"
    elif temporary is None and not after_deploy:
        yield (
            "released-code-inserts",
            f"{operation.name}: NOT NULL with no database default: the released code cannot insert rows "
            "(AddFieldSafely with a temporary_default)",
        )
