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
from django.db.models.expressions import DatabaseDefault

from .states import JobStatus

if TYPE_CHECKING:
    from .deliveries import QueueDelivery
    from .jobs import Job, ProgressReport

__all__ = ["RUNNABLE", "attach_calls", "claim", "finish", "insert_jobs", "record", "renew_leases", "report_progress"]

DELIVERY_FIELDS = (
    "id", "job_id", "route", "queue_name", "backend", "message_id", "payload", "status", "attempts",
    "attempts_since", "last_error", "next_attempt_at", "sent_at", "external_id", "created_at",
)  # fmt: skip


# A queued job is runnable once due (``queued_at``: its submit, its ``run_after``, or a
# retry's backoff; a ``run_after`` is never passed over either) and before its own
# deadline, by the database's clock: hosts' clocks may disagree, the database's is the one
# every worker compares with. The statement's time, as Django's Now(): the same as now()
# outside a transaction, and inside one (a test's) it moves on as Now() does.
RUNNABLE = (
    "status = 'queued' AND queued_at <= statement_timestamp() "
    "AND (run_after IS NULL OR run_after <= statement_timestamp()) "
    "AND (expires_at IS NULL OR expires_at > statement_timestamp())"
)


@functools.cache
def _claim_sql(job_model: type[models.Model], *, among_ids: bool) -> str:
    job = job_model._meta.db_table
    # Every column: a field left out would be fetched again, one query per job, when read.
    columns = ", ".join(f'"{field.column}"' for field in job_model._meta.concrete_fields)
    # ``ARRAY(SELECT unnest(…))``, a value the planner cannot count: with the array itself it
    # weighed a hundred ids against a table of a few thousand rows and scanned the table.
    among = "AND id = ANY(ARRAY(SELECT unnest(%(ids)b::uuid[]))) " if among_ids else ""
    return (
        # The highest priority, then the longest due, through the partial index on queued
        # jobs in that order (modalkit_job_priority_idx): the scan stops after ``limit``
        # rows, and jobs due later sit past the end of the range it reads.
        f'WITH picked AS (SELECT id FROM "{job}" WHERE {RUNNABLE} {among}'
        "ORDER BY priority DESC, queued_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
        f"UPDATE \"{job}\" SET status = 'running', started_at = statement_timestamp(), attempts = attempts + 1, "
        "runs = runs + 1, "
        "lease_token = %(token)s, lease_expires_at = statement_timestamp() + make_interval(secs => %(lease)s) "
        # By primary key: ``id IN (SELECT …)`` was planned as a scan of the whole table.
        f"WHERE id = ANY(ARRAY(SELECT id FROM picked)) RETURNING {columns}"
    )


def claim(
    job_model: type[Job],
    *,
    limit: int,
    token: uuid.UUID,
    lease_seconds: float,
    ids: Sequence[str] | None,
    using: str,
) -> list[Job]:
    """Claim up to ``limit`` runnable jobs (among ``ids`` if given) under lease ``token``."""
    params = {"limit": limit, "token": token, "lease": lease_seconds, "ids": ids}
    with _server_side_cursor(using) as cursor:
        cursor.execute(_claim_sql(job_model, among_ids=ids is not None), params)
        rows = cursor.fetchall()
    return _instances(job_model, rows, using)


def renew_leases(
    job_model: type[Job], tokens: Sequence[uuid.UUID], *, lease_seconds: float, using: str
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Push back the leases ``tokens`` by ``lease_seconds`` from now; the (token, job id)
    pairs still held."""
    table = job_model._meta.db_table
    statement = (
        f'UPDATE "{table}" SET lease_expires_at = statement_timestamp() + make_interval(secs => %s) '
        "WHERE status = 'running' AND lease_token = ANY(%b::uuid[]) RETURNING lease_token, id"
    )
    with _server_side_cursor(using) as cursor:
        cursor.execute(statement, [lease_seconds, list(tokens)])
        return [(token, job_id) for token, job_id in cursor.fetchall()]


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
    # A delivery's times are the database's too: made now, its age budget from now, and
    # due when its maker's window to send it first (next_attempt_at - created_at) ends.
    times = {
        "created_at": "statement_timestamp()",
        "attempts_since": "statement_timestamp()",
        "next_attempt_at": "statement_timestamp() + (d.next_attempt_at - d.created_at)",
    }
    values = ", ".join(times.get(field, f"d.{field}") for field in DELIVERY_FIELDS)
    # A job sent back to the queue is due again after its backoff (``delay``), by the
    # database's clock, as is the time a finished one finished.
    due = "statement_timestamp() + make_interval(secs => outcome.delay)"
    return (
        "WITH outcome AS (SELECT * FROM UNNEST(%b::uuid[], %b::uuid[], %b::text[], %b::jsonb[], %b::jsonb[], "
        "%b::float8[]) AS o (id, token, status, result, error, delay)), "
        f'done AS (UPDATE "{job}" AS job SET status = outcome.status, result = outcome.result, '
        "error = outcome.error, lease_token = NULL, lease_expires_at = NULL, "
        "finished_at = CASE WHEN outcome.status = 'queued' THEN NULL ELSE statement_timestamp() END, "
        f"queued_at = CASE WHEN outcome.status = 'queued' THEN {due} ELSE job.queued_at END, "
        f"run_after = CASE WHEN outcome.status = 'queued' THEN {due} ELSE job.run_after END, "
        # A job sent back to the queue after an error forgets its ended Modal call.
        "modal_call_id = CASE WHEN outcome.status = 'queued' THEN NULL ELSE job.modal_call_id END FROM outcome "
        "WHERE job.id = outcome.id AND job.id = ANY(ARRAY(SELECT id FROM outcome)) "
        "AND job.status = 'running' AND job.lease_token = outcome.token RETURNING job.id), "
        f'sent AS (INSERT INTO "{delivery}" ({columns}) SELECT {values} FROM UNNEST(%b::uuid[], %b::uuid[], '
        "%b::text[], %b::text[], %b::text[], %b::text[], %b::jsonb[], %b::text[], %b::integer[], "
        "%b::timestamptz[], %b::text[], %b::timestamptz[], %b::timestamptz[], %b::text[], %b::timestamptz[]) "
        f"AS d ({columns}) WHERE d.job_id IN (SELECT id FROM done) RETURNING id, attempts_since) "
        "SELECT (SELECT array_agg(id) FROM done), (SELECT array_agg(id) FROM sent), "
        "(SELECT array_agg(attempts_since) FROM sent)"
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
        (job.id, token, job.status, job.result_json or _json(job.result), _json(job.error), job.retry_delay)
        for job, token in zip(jobs, tokens, strict=True)
    ]
    rows = [
        (delivery.id, delivery.job_id, delivery.route, delivery.queue_name, delivery.backend, delivery.message_id,
         _json(delivery.payload), delivery.status, delivery.attempts, delivery.attempts_since, delivery.last_error,
         delivery.next_attempt_at, delivery.sent_at, delivery.external_id, delivery.created_at)
        for delivery in deliveries
    ]  # fmt: skip
    params = [*_columns(outcomes, 6), *_columns(rows, len(DELIVERY_FIELDS))]
    with _server_side_cursor(using) as cursor:
        cursor.execute(_finish_sql(job_model), params)
        held, sent, since = cursor.fetchone()
    # Each delivery's budget start, as stored (the database's time): what recording an
    # attempt compares with.
    started = dict(zip(sent or (), since or (), strict=True))
    for delivery in deliveries:
        if delivery.id in started:
            delivery.attempts_since = started[delivery.id]
    return set(held or ())


@functools.cache
def _record_sql(delivery_model: type[models.Model]) -> str:
    table = delivery_model._meta.db_table
    # A retry due past the delivery's age budget (``attempts_since`` + MAX_AGE_SECONDS) is
    # not made: the delivery is dead. By the database's clock, as every due time here.
    too_old = (
        "(v.status = 'retrying' AND statement_timestamp() + make_interval(secs => v.delay) "
        "> delivery.attempts_since + make_interval(secs => %(max_age)s))"
    )
    return (
        "WITH v AS (SELECT * FROM UNNEST(%(ids)b::uuid[], %(previous)b::integer[], %(since)b::timestamptz[], "
        "%(status)b::text[], %(attempts)b::integer[], %(external)b::text[], %(delay)b::float8[], %(error)b::text[]) "
        "AS v (id, previous, since, status, attempts, external_id, delay, last_error)) "
        f'UPDATE "{table}" AS delivery SET attempts = v.attempts, external_id = v.external_id, '
        f"last_error = v.last_error, status = CASE WHEN {too_old} THEN 'dead' ELSE v.status END, "
        "sent_at = CASE WHEN v.status = 'sent' THEN statement_timestamp() ELSE delivery.sent_at END, "
        f"next_attempt_at = CASE WHEN v.status = 'retrying' AND NOT {too_old} "
        "THEN statement_timestamp() + make_interval(secs => v.delay) END "
        "FROM v WHERE delivery.id = v.id AND delivery.id = ANY(ARRAY(SELECT id FROM v)) "
        # Compare-and-set on what only grows: the attempts of this budget, and when the
        # budget began (a redelivery starts a new one), so an attempt that ends late never
        # overwrites what another recorded, or an operator's redelivery, meanwhile.
        "AND delivery.attempts = v.previous AND delivery.attempts_since = v.since "
        "AND delivery.status IN ('pending', 'retrying') RETURNING delivery.id, delivery.status"
    )


def record(
    delivery_model: type[QueueDelivery],
    deliveries: Sequence[QueueDelivery],
    previous: Sequence[tuple[int, dt.datetime]],
    *,
    max_age_seconds: float,
    using: str,
) -> dict[uuid.UUID, str]:
    """Write each attempt's result (already applied to the delivery) where nobody else
    recorded one, or redelivered it, since it was sent: its attempt count and budget start
    are still ``previous``. Returns the ids written, with the status each now has."""
    params = {
        "ids": [delivery.id for delivery in deliveries],
        "previous": [attempts for attempts, _ in previous],
        "since": [since for _, since in previous],
        "status": [delivery.status for delivery in deliveries],
        "attempts": [delivery.attempts for delivery in deliveries],
        "external": [delivery.external_id for delivery in deliveries],
        "delay": [delivery.retry_delay for delivery in deliveries],
        "error": [delivery.last_error for delivery in deliveries],
        "max_age": max_age_seconds,
    }
    with _server_side_cursor(using) as cursor:
        cursor.execute(_record_sql(delivery_model), params)
        return dict(cursor.fetchall())


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

    One statement: the jobs' progress and count of outputs, and the new outputs inserted
    as rows of their own, numbered in the job's current run (``runs``). A write never
    sends back, or rewrites, what is already stored. A run's first report (``reset``)
    clears the progress and deletes the earlier runs' outputs.
    """
    table = job_model._meta.db_table
    outputs_table = job_model._meta.get_field("outputs").related_model._meta.db_table  # type: ignore[union-attr]
    statement = (
        "WITH v AS (SELECT * FROM unnest(%(ids)b::uuid[], %(progress)b::float8[], %(message)b::text[], "
        "%(reset)b::bool[], %(count)b::integer[]) AS v (id, progress, message, reset, count)), "
        f'held AS (UPDATE "{table}" AS j SET '
        "progress = CASE WHEN v.reset THEN v.progress ELSE COALESCE(v.progress, j.progress) END, "
        "progress_message = CASE WHEN v.reset THEN COALESCE(v.message, '') "
        "ELSE COALESCE(v.message, j.progress_message) END, "
        "output_count = CASE WHEN v.reset THEN 0 ELSE j.output_count END + v.count "
        "FROM v WHERE j.id = v.id AND j.status = 'running' AND j.lease_token = %(token)s "
        "RETURNING j.id, j.runs, v.reset), "
        f'gone AS (DELETE FROM "{outputs_table}" AS o USING held '
        "WHERE held.reset AND o.job_id = held.id AND o.run <> held.runs), "
        f'added AS (INSERT INTO "{outputs_table}" (job_id, run, seq, output) '
        "SELECT n.job_id, held.runs, n.seq, n.output FROM unnest(%(output_jobs)b::uuid[], %(seqs)b::integer[], "
        "%(outputs)b::jsonb[]) AS n (job_id, seq, output) JOIN held ON held.id = n.job_id) "
        "SELECT id FROM held"
    )
    outputs = [
        (report.job_id, report.start + index, json.dumps(output))
        for report in reports
        for index, output in enumerate(report.outputs)
    ]
    job_ids, seqs, encoded = _columns(outputs, 3)
    params = {
        "ids": [report.job_id for report in reports],
        "progress": [report.progress for report in reports],
        "message": [report.message for report in reports],
        "reset": [report.reset for report in reports],
        "count": [len(report.outputs) for report in reports],
        "token": token,
        "output_jobs": job_ids,
        "seqs": seqs,
        "outputs": encoded,
    }
    with _server_side_cursor(using) as cursor:
        cursor.execute(statement, params)
        return {row[0] for row in cursor.fetchall()}


def insert_jobs(job_model: type[Job], jobs: Sequence[Job], *, using: str) -> None:
    """New jobs in one ``INSERT … SELECT FROM UNNEST``, each column one array parameter.

    ``bulk_create`` prepares every field of every row through the ORM, a parameter each
    (thirty a job): for 1,000 jobs it measured about 1.7 times as long as this. A field
    left to the database's default (``db_default``) is NULL in its array and the default
    in the row, read back onto the job as ``bulk_create`` would.
    """
    connection = connections[using]
    fields = job_model._meta.concrete_fields
    columns = ", ".join(connection.ops.quote_name(str(field.column)) for field in fields)
    arrays = ", ".join(f"%b::{field.db_type(connection)}[]" for field in fields)
    names = [connection.ops.quote_name(str(field.column)) for field in fields]
    # The only database default of a job is Now(): Django's, the statement's time.
    values = ", ".join(
        f"COALESCE(v.{name}, statement_timestamp())" if field.has_db_default() else f"v.{name}"
        for name, field in zip(names, fields, strict=True)
    )
    returned = [field for field in fields if field.has_db_default()]
    table = connection.ops.quote_name(job_model._meta.db_table)
    params = [[_column_value(field, job) for job in jobs] for field in fields]
    statement = (
        f"INSERT INTO {table} ({columns}) SELECT {values} FROM UNNEST({arrays}) AS v ({columns}) "
        f"RETURNING {', '.join(connection.ops.quote_name(str(field.column)) for field in returned) or 'id'}"
    )
    with _server_side_cursor(using) as cursor:
        cursor.execute(statement, params)
        rows = cursor.fetchall()
    # RETURNING gives the rows in the order of the SELECT, which UNNEST keeps.
    for job, row in zip(jobs, rows, strict=True):
        for field, value in zip(returned, row, strict=False):
            setattr(job, field.attname, value)


def _column_value(field: Any, job: Job) -> Any:
    value = getattr(job, field.attname)
    if isinstance(value, DatabaseDefault):
        return None
    if isinstance(field, models.JSONField):
        # None is SQL NULL, as Django stores it.
        return None if value is None else json.dumps(value, cls=field.encoder)
    return value
