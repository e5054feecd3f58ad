"""Migration operations that change a serving table without holding its writers.

A job table of ten million rows keeps taking submits while ``migrate`` runs: nothing here
holds a lock that stops writes for longer than a catalogue update.

- ``AddIndexConcurrently`` / ``RemoveIndexConcurrently``: ``CREATE``/``DROP INDEX
  CONCURRENTLY``. A build that failed half-way leaves an ``INVALID`` index behind; the next
  ``migrate`` drops it and builds again (and keeps a valid index of the name, built by a
  ``migrate`` that stopped before recording the migration).
- ``AddUniqueIndexConcurrently``: a ``UniqueConstraint`` that Django makes as a unique
  index (one with a ``condition``), built concurrently.
- ``AddConstraintNotValid`` then ``ValidateConstraint``: the check holds new rows at once;
  the old ones are read later under a lock that lets writes through. Validate in a
  non-atomic migration: in a transaction, the scan would keep the locks taken before it.
- ``AddFieldSafely``: ``ADD COLUMN`` that neither rewrites nor scans the table: its check
  (a positive integer's ``>= 0``) is added ``NOT VALID`` (validate it apart), and a
  ``temporary_default`` stays in the database so that the released code, which does not
  write the column, can still insert rows until ``DropTemporaryDefault`` runs after the
  deploy.

They are PostgreSQL's forms. On another database (the embedded SQLite) each does what the
plain Django operation does. A migration building or validating sets ``atomic = False``,
since PostgreSQL builds concurrently only outside a transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.db import NotSupportedError, migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import ProjectState

__all__ = [
    "AddConstraintNotValid",
    "AddFieldSafely",
    "AddIndexConcurrently",
    "AddUniqueIndexConcurrently",
    "DropTemporaryDefault",
    "RemoveIndexConcurrently",
    "ValidateConstraint",
]


def on_postgresql(schema_editor: BaseDatabaseSchemaEditor) -> bool:
    return schema_editor.connection.vendor == "postgresql"


def outside_transaction(
    schema_editor: BaseDatabaseSchemaEditor, operation: migrations.operations.base.Operation
) -> None:
    if schema_editor.connection.in_atomic_block:
        raise NotSupportedError(f"{type(operation).__name__} needs a migration with atomic = False.")


def built_already(schema_editor: BaseDatabaseSchemaEditor, name: str) -> bool:
    """Whether a valid index of this name exists (a ``migrate`` that stopped after building
    it); an ``INVALID`` one, which an interrupted concurrent build leaves, is dropped."""
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [schema_editor.quote_name(name)]
        )
        row = cursor.fetchone()
    if row is not None and not row[0]:
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {schema_editor.quote_name(name)}")
    return row is not None and bool(row[0])


class AddIndexConcurrently(migrations.AddIndex):
    """``CREATE INDEX CONCURRENTLY``: writes go on while the index is built."""

    def describe(self) -> str:
        return f"Concurrently create index {self.index.name} on {self.model_name}"

    def database_forwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        if not on_postgresql(schema_editor):
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        outside_transaction(schema_editor, self)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model) and not built_already(
            schema_editor, self.index.name
        ):
            schema_editor.add_index(model, self.index, concurrently=True)  # type: ignore[call-arg]

    def database_backwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        if not on_postgresql(schema_editor):
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        outside_transaction(schema_editor, self)
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self.index, concurrently=True)  # type: ignore[call-arg]


class RemoveIndexConcurrently(migrations.RemoveIndex):
    """``DROP INDEX CONCURRENTLY``: it waits for the index's readers instead of stopping writers."""

    def describe(self) -> str:
        return f"Concurrently remove index {self.name} from {self.model_name}"

    def database_forwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        if not on_postgresql(schema_editor):
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        outside_transaction(schema_editor, self)
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            index = from_state.models[app_label, self.model_name_lower].get_index_by_name(self.name)
            schema_editor.remove_index(model, index, concurrently=True)  # type: ignore[call-arg]

    def database_backwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        if not on_postgresql(schema_editor):
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        outside_transaction(schema_editor, self)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            index = to_state.models[app_label, self.model_name_lower].get_index_by_name(self.name)
            if not built_already(schema_editor, index.name):
                schema_editor.add_index(model, index, concurrently=True)  # type: ignore[call-arg]


class AddUniqueIndexConcurrently(migrations.AddConstraint):
    """A ``UniqueConstraint`` with a ``condition`` (which Django makes as a unique index),
    built with ``CREATE UNIQUE INDEX CONCURRENTLY``."""

    def __init__(self, model_name: str, constraint: models.UniqueConstraint) -> None:
        if not isinstance(constraint, models.UniqueConstraint) or constraint.condition is None:
            raise ValueError("AddUniqueIndexConcurrently takes a UniqueConstraint with a condition.")
        super().__init__(model_name, constraint)

    def describe(self) -> str:
        return f"Concurrently create unique index {self.constraint.name} on {self.model_name}"

    def database_forwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        if not on_postgresql(schema_editor):
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        outside_transaction(schema_editor, self)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model) and not built_already(
            schema_editor, self.constraint.name
        ):
            statement: Any = self.constraint.create_sql(model, schema_editor)
            statement.template = statement.template.replace(
                "CREATE UNIQUE INDEX", "CREATE UNIQUE INDEX CONCURRENTLY", 1
            )
            schema_editor.execute(statement)


class AddConstraintNotValid(migrations.AddConstraint):
    """``ADD CONSTRAINT … NOT VALID`` for a ``CheckConstraint``: held by new rows at once,
    without reading the old ones (``ValidateConstraint`` does, later)."""

    def __init__(self, model_name: str, constraint: models.CheckConstraint) -> None:
        if not isinstance(constraint, models.CheckConstraint):
            raise ValueError("AddConstraintNotValid takes a CheckConstraint.")
        super().__init__(model_name, constraint)

    def describe(self) -> str:
        return f"Create not valid constraint {self.constraint.name} on {self.model_name}"

    def database_forwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        if not on_postgresql(schema_editor):
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.execute(f"{self.constraint.create_sql(model, schema_editor)} NOT VALID")


class _AlterOnPostgreSQL(migrations.operations.base.Operation):
    """A catalogue statement on a model's table, on PostgreSQL only, with no state to
    change and nothing to undo: what ``ValidateConstraint`` and ``DropTemporaryDefault`` share."""

    reduces_to_sql = True
    reversible = True

    def __init__(self, model_name: str, name: str) -> None:
        self.model_name = model_name
        self.name = name

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return type(self).__name__, [], {"model_name": self.model_name, "name": self.name}

    def state_forwards(self, app_label: str, state: ProjectState) -> None:
        pass

    def alter(self, model: type[models.Model], quote: Callable[[str], str]) -> str:
        """The ``ALTER TABLE`` statement."""
        raise NotImplementedError

    def database_forwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        model = from_state.apps.get_model(app_label, self.model_name)
        if on_postgresql(schema_editor) and self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.execute(self.alter(model, schema_editor.quote_name))

    def database_backwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        pass


class ValidateConstraint(_AlterOnPostgreSQL):
    """``VALIDATE CONSTRAINT``: reads the table under a lock that lets reads and writes
    through. Nothing to do on other databases (their constraints are valid when added)."""

    def describe(self) -> str:
        return f"Validate constraint {self.name} on {self.model_name}"

    def alter(self, model: type[models.Model], quote: Callable[[str], str]) -> str:
        return f"ALTER TABLE {quote(model._meta.db_table)} VALIDATE CONSTRAINT {quote(self.name)}"


class AddFieldSafely(migrations.AddField):
    """``ADD COLUMN`` that neither rewrites nor scans a large table.

    The column's check (a ``PositiveIntegerField``'s ``>= 0``), which PostgreSQL would verify
    row by row under an exclusive lock, is added ``NOT VALID`` under the name PostgreSQL
    gives a column's check (``<table>_<column>_check``): validate it with
    ``ValidateConstraint`` in a migration of its own, with ``atomic = False``. A
    ``temporary_default`` (a constant: PostgreSQL stores it once, no rewrite) fills the old
    rows and stays as the column's default until ``DropTemporaryDefault`` removes it, so the
    released code, which does not know the column, still inserts rows meanwhile.
    """

    def __init__(
        self, model_name: str, name: str, field: models.Field[Any, Any], temporary_default: Any = None, **kwargs: Any
    ) -> None:
        self.temporary_default = temporary_default
        super().__init__(model_name, name, field, **kwargs)

    def deconstruct(self) -> tuple[str, Sequence[Any], dict[str, Any]]:
        name, args, kwargs = super().deconstruct()
        if self.temporary_default is not None:
            kwargs["temporary_default"] = self.temporary_default
        return name, args, kwargs

    def describe(self) -> str:
        return f"Add field {self.name} to {self.model_name} without a rewrite or a scan"

    def database_forwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        if not on_postgresql(schema_editor):
            return self.add_elsewhere(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        field: Any = model._meta.get_field(self.name)
        if field.is_relation or field.unique or field.db_index:
            raise NotSupportedError("AddFieldSafely adds plain columns: no relation, index or unique.")
        quote = schema_editor.quote_name
        table = model._meta.db_table
        check = field.db_check(schema_editor.connection)
        definition = field.db_type(schema_editor.connection)
        params: list[Any] = []
        if self.temporary_default is not None:
            definition += " DEFAULT %s"
            params.append(field.get_db_prep_save(self.temporary_default, schema_editor.connection))
        definition += " NULL" if field.null else " NOT NULL"
        schema_editor.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(field.column)} {definition}", params)
        if check:
            name = quote(f"{table}_{field.column}_check")
            schema_editor.execute(f"ALTER TABLE {quote(table)} ADD CONSTRAINT {name} CHECK ({check}) NOT VALID")

    def add_elsewhere(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        """Django's ``AddField``, the old rows filled with ``temporary_default`` (no default kept)."""
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            field: Any = model._meta.get_field(self.name)
            default = field.default
            if self.temporary_default is not None:
                field.default = self.temporary_default
            try:
                schema_editor.add_field(from_state.apps.get_model(app_label, self.model_name), field)
            finally:
                field.default = default


class DropTemporaryDefault(_AlterOnPostgreSQL):
    """Drop the database default an ``AddFieldSafely`` left for the released code.

    A catalogue change only. Nothing to do on other databases (``AddFieldSafely`` left none)."""

    def describe(self) -> str:
        return f"Drop the temporary database default of {self.model_name}.{self.name}"

    def alter(self, model: type[models.Model], quote: Callable[[str], str]) -> str:
        field: Any = model._meta.get_field(self.name)
        return f"ALTER TABLE {quote(model._meta.db_table)} ALTER COLUMN {quote(field.column)} DROP DEFAULT"
