"""Every raw SQL statement of the app: the hot steps, one PostgreSQL statement each.

Claiming a batch, finishing it (with its deliveries), recording its sends, writing its
progress and inserting a batch's jobs are what workers and the API do hundreds of times a
second. Through the ORM they took several round trips and, measured with a profile of the
worker, most of its time in Python building statements: every field of every row
prepared, twice. Here each is one statement, compare-and-set as before, with only the
columns that change. Other databases take the ORM paths of :mod:`.jobs`,
:mod:`.deliveries` and :mod:`.batches`, which do the same in more steps.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from django.db import connections, models

from .states import JobStatus

if TYPE_CHECKING:
    from .deliveries import QueueDelivery
    from .jobs import Job, ProgressReport

__all__ = ["attach_calls", "claim", "finish", "insert_jobs", "record", "report_progress"]

DELIVERY_FIELDS = (
    "id", "job_id", "route", "queue_name", "backend", "message_id", "payload", "status", "attempts",
    "attempts_since", "last_error", "next_attempt_at", "sent_at", "external_id", "created_at",
)  # fmt: skip


@functools.cache
def _claim_sql(job_model: type[models.Model]) -> str:
    job = job_model._meta.db_table
    # Every column: a field left out would be fetched again, one query per job, when read.
    columns = ", ".join(f'"{field.column}"' for field in job_model._meta.concrete_fields)
    runnable = (
        "status = %(queued)s AND (run_after IS NULL OR run_after <= %(now)s) "
        "AND (expires_at IS NULL OR expires_at > %(now)s)"
    )
    return (
        # ``ARRAY(SELECT unnest(…))``, a value the planner cannot count: with the array itself it
        # weighed a hundred ids against a table of a few thousand rows and scanned the table.
        f'WITH woken AS (SELECT id, priority FROM "{job}" WHERE id = ANY(ARRAY(SELECT unnest(%(ids)b::uuid[]))) '
        f"AND {runnable} FOR UPDATE SKIP LOCKED), "
        # Queued jobs of a higher priority than the lowest woken for, whose own wake-ups
        # wait behind these in the broker: highest and oldest first, through the partial
        # priority index (modalkit_job_priority_idx), which the usual case (all one
        # priority) leaves at its first entry.
        f'ahead AS (SELECT id FROM "{job}" WHERE priority > (SELECT min(priority) FROM woken) AND {runnable} '
        "AND NOT id = ANY(%(ids)b::uuid[]) ORDER BY priority DESC, queued_at LIMIT %(extra)s FOR UPDATE SKIP LOCKED) "
        f'UPDATE "{job}" SET status = %(running)s, started_at = %(now)s, attempts = attempts + 1, '
        "lease_token = %(token)s, lease_expires_at = %(expires)s "
        # By primary key: ``id IN (SELECT …)`` was planned as a scan of the whole table.
        f"WHERE id = ANY(ARRAY(SELECT id FROM woken UNION ALL SELECT id FROM ahead)) RETURNING {columns}"
    )


def claim(
    job_model: type[Job],
    job_ids: Sequence[str],
    *,
    token: uuid.UUID,
    now: dt.datetime,
    expires: dt.datetime,
    extra: int,
    using: str,
) -> list[Job]:
    """Claim the runnable jobs among ``job_ids`` and up to ``extra`` runnable jobs of a higher priority."""
    params = {
        "ids": list(job_ids),
        "queued": JobStatus.QUEUED,
        "running": JobStatus.RUNNING,
        "now": now,
        "token": token,
        "expires": expires,
        "extra": extra,
    }
    with _server_side_cursor(using) as cursor:
        cursor.execute(_claim_sql(job_model), params)
        rows = cursor.fetchall()
    return _instances(job_model, rows, using)


@functools.cache
def _converters(model: type[models.Model], using: str) -> tuple[list[str], list[tuple[int, Any]]]:
    """The model's field names in column order, and each field's database converters, as a
    queryset applies them (``get_db_converters``: JSON fields decode jsonb, which Django
    reads as text)."""
    connection = connections[using]
    fields = model._meta.concrete_fields
    converters = [
        (index, convert) for index, field in enumerate(fields) for convert in field.get_db_converters(connection)
    ]
    return [field.attname for field in fields], converters


def _instances(model: type[Job], rows: Sequence[Sequence[Any]], using: str) -> list[Job]:
    """Model instances from rows of every concrete column, as a queryset would make them."""
    names, converters = _converters(model, using)
    connection = connections[using]
    jobs = []
    for row in rows:
        values = list(row)
        for index, convert in converters:
            values[index] = convert(values[index], None, connection)
        jobs.append(model.from_db(using, names, values))
    return jobs


@contextlib.contextmanager
def _server_side_cursor(using: str) -> Iterator[Any]:
    """A psycopg cursor that sends its parameters apart from the statement.

    Django's cursors (the connection's ``cursor_factory``, unless ``server_side_binding``
    is set) bind them client-side: they render each array parameter (JSON strings
    escaped inside array literals, for a hundred rows) into the SQL text, which measured
    a third of a worker's time. A plain ``psycopg.Cursor`` on the same connection does
    not. It prepares statements only if the connection's ``prepare_threshold`` says so
    (Django's default: never, for connection poolers). Errors are Django's, as from its
    own cursors.
    """
    import psycopg  # here: an install for SQLite alone has no psycopg

    wrapper = connections[using]
    wrapper.ensure_connection()
    with wrapper.wrap_database_errors, psycopg.Cursor(wrapper.connection) as cursor:
        yield cursor


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as columns: each becomes one array parameter, so the statement's text (and
    psycopg's parse of it) is the same whatever the batch size."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


@functools.cache
def _finish_sql(job_model: type[models.Model]) -> str:
    job = job_model._meta.db_table
    delivery_model = job_model._meta.get_field("deliveries").related_model
    assert delivery_model is not None
    delivery = delivery_model._meta.db_table
    columns = ", ".join(DELIVERY_FIELDS)
    return (
        "WITH outcome AS (SELECT * FROM UNNEST(%b::uuid[], %b::uuid[], %b::text[], %b::jsonb[], %b::jsonb[], "
        "%b::timestamptz[], %b::timestamptz[], %b::timestamptz[]) "
        "AS o (id, token, status, result, error, finished_at, run_after, enqueued_at)), "
        f'done AS (UPDATE "{job}" AS job SET status = outcome.status, result = outcome.result, '
        "error = outcome.error, finished_at = outcome.finished_at, run_after = outcome.run_after, "
        "enqueued_at = outcome.enqueued_at, lease_token = NULL, lease_expires_at = NULL, "
        # A job sent back to the queue after an error forgets its ended Modal call.
        "modal_call_id = CASE WHEN outcome.status = 'queued' THEN NULL ELSE job.modal_call_id END FROM outcome "
        "WHERE job.id = outcome.id AND job.id = ANY(ARRAY(SELECT id FROM outcome)) "
        "AND job.status = %s AND job.lease_token = outcome.token RETURNING job.id), "
        f'sent AS (INSERT INTO "{delivery}" ({columns}) SELECT d.* FROM UNNEST(%b::uuid[], %b::uuid[], '
        "%b::text[], %b::text[], %b::text[], %b::text[], %b::jsonb[], %b::text[], %b::integer[], "
        "%b::timestamptz[], %b::text[], %b::timestamptz[], %b::timestamptz[], %b::text[], %b::timestamptz[]) "
        f"AS d ({columns}) WHERE d.job_id IN (SELECT id FROM done) RETURNING id) "
        "SELECT array_agg(id) FROM done"
    )


def finish(
    job_model: type[Job],
    jobs: Sequence[Job],
    tokens: Sequence[uuid.UUID | None],
    deliveries: Sequence[QueueDelivery],
    *,
    using: str,
) -> set[uuid.UUID]:
    """Store each job's outcome (already set on it: ``end()`` or ``requeue()``) where the
    lease it was claimed under (``tokens``) still holds, and insert the deliveries of those
    jobs; returns their ids."""
    outcomes = [
        (job.id, token, job.status, _json(job.result), _json(job.error), job.finished_at, job.run_after,
         job.enqueued_at)
        for job, token in zip(jobs, tokens, strict=True)
    ]  # fmt: skip
    rows = [
        (delivery.id, delivery.job_id, delivery.route, delivery.queue_name, delivery.backend, delivery.message_id,
         _json(delivery.payload), delivery.status, delivery.attempts, delivery.attempts_since, delivery.last_error,
         delivery.next_attempt_at, delivery.sent_at, delivery.external_id, delivery.created_at)
        for delivery in deliveries
    ]  # fmt: skip
    params = [*_columns(outcomes, 8), JobStatus.RUNNING, *_columns(rows, len(DELIVERY_FIELDS))]
    with _server_side_cursor(using) as cursor:
        cursor.execute(_finish_sql(job_model), params)
        (held,) = cursor.fetchone()
    return set(held or ())


@functools.cache
def _record_sql(delivery_model: type[models.Model]) -> str:
    table = delivery_model._meta.db_table
    return (
        "WITH v AS (SELECT * FROM UNNEST(%b::uuid[], %b::integer[], %b::text[], %b::integer[], %b::timestamptz[], "
        "%b::text[], %b::timestamptz[], %b::text[]) AS v (id, previous, status, attempts, sent_at, external_id, "
        f'next_attempt_at, last_error)) UPDATE "{table}" AS delivery SET status = v.status, attempts = v.attempts, '
        "sent_at = v.sent_at, external_id = v.external_id, next_attempt_at = v.next_attempt_at, "
        "last_error = v.last_error FROM v WHERE delivery.id = v.id AND delivery.id = ANY(ARRAY(SELECT id FROM v)) "
        "AND delivery.attempts = v.previous AND delivery.status IN ('pending', 'retrying') RETURNING delivery.id"
    )


def record(
    delivery_model: type[QueueDelivery],
    deliveries: Sequence[QueueDelivery],
    previous_attempts: Sequence[int],
    *,
    using: str,
) -> set[uuid.UUID]:
    """Write each attempt's result (already applied to the delivery) where nobody else
    recorded one since: its attempt count is still what it was when it was sent. Returns
    the ids written."""
    rows = [
        (delivery.id, previous, delivery.status, delivery.attempts, delivery.sent_at, delivery.external_id,
         delivery.next_attempt_at, delivery.last_error)
        for delivery, previous in zip(deliveries, previous_attempts, strict=True)
    ]  # fmt: skip
    with _server_side_cursor(using) as cursor:
        cursor.execute(_record_sql(delivery_model), _columns(rows, 8))
        return {row[0] for row in cursor.fetchall()}


@functools.cache
def _attach_calls_sql(job_model: type[models.Model]) -> str:
    job = job_model._meta.db_table
    return (
        f'UPDATE "{job}" AS job SET modal_call_id = v.call_id FROM UNNEST(%b::uuid[], %b::text[]) AS v (id, call_id) '
        "WHERE job.id = v.id AND job.status = %s AND job.lease_token = %s RETURNING job.id"
    )


def attach_calls(
    job_model: type[Job], calls: Sequence[tuple[uuid.UUID, str]], *, token: uuid.UUID, using: str
) -> set[uuid.UUID]:
    """Store each job's Modal call id where the batch's lease (``token``) still holds; returns those ids."""
    with _server_side_cursor(using) as cursor:
        cursor.execute(_attach_calls_sql(job_model), [*_columns(calls, 2), JobStatus.RUNNING, token])
        return {row[0] for row in cursor.fetchall()}


def report_progress(
    job_model: type[Job], reports: Sequence[ProgressReport], *, token: uuid.UUID, using: str
) -> set[uuid.UUID]:
    """Write each report where its job still runs under lease ``token``; returns those ids.
    Partial outputs are appended in the database (``jsonb || jsonb``): a write never sends
    back what is already stored."""
    table = job_model._meta.db_table
    statement = (
        f'UPDATE "{table}" AS j SET '
        "progress = CASE WHEN v.reset THEN v.progress ELSE COALESCE(v.progress, j.progress) END, "
        "progress_message = CASE WHEN v.reset THEN COALESCE(v.message, '') "
        "ELSE COALESCE(v.message, j.progress_message) END, "
        "partial_outputs = CASE WHEN v.reset THEN v.outputs::jsonb ELSE j.partial_outputs || v.outputs::jsonb END "
        "FROM unnest(%s::uuid[], %s::float8[], %s::text[], %s::text[], %s::bool[]) "
        "AS v(id, progress, message, outputs, reset) "
        "WHERE j.id = v.id AND j.status = %s AND j.lease_token = %s RETURNING j.id"
    )
    params: list[Any] = [
        [report.job_id for report in reports],
        [report.progress for report in reports],
        [report.message for report in reports],
        [json.dumps(report.outputs) for report in reports],
        [report.reset for report in reports],
        JobStatus.RUNNING.value,
        token,
    ]
    with connections[using].cursor() as cursor:
        cursor.execute(statement, params)
        return {row[0] for row in cursor.fetchall()}


def insert_jobs(job_model: type[Job], jobs: Sequence[Job], *, using: str) -> None:
    """New jobs in one ``INSERT … SELECT FROM UNNEST``, each column one array parameter.

    ``bulk_create`` prepares every field of every row through the ORM, a parameter each
    (thirty a job): for 1,000 jobs it measured about 1.7 times as long as this.
    """
    connection = connections[using]
    fields = job_model._meta.concrete_fields
    columns = ", ".join(connection.ops.quote_name(str(field.column)) for field in fields)
    arrays = ", ".join(f"%b::{field.db_type(connection)}[]" for field in fields)
    table = connection.ops.quote_name(job_model._meta.db_table)
    params = [[_column_value(field, job) for job in jobs] for field in fields]
    with _server_side_cursor(using) as cursor:
        cursor.execute(f"INSERT INTO {table} ({columns}) SELECT * FROM UNNEST({arrays})", params)


def _column_value(field: Any, job: Job) -> Any:
    value = getattr(job, field.attname)
    if isinstance(field, models.JSONField):
        # None is SQL NULL, as Django stores it.
        return None if value is None else json.dumps(value, cls=field.encoder)
    return value
