"""Seconds between two timestamps, in SQL: what Django does not ship for every database."""

from __future__ import annotations

from typing import Any

from django.db.models import FloatField, Func

__all__ = ["Seconds"]


class Seconds(Func):
    """``end - start`` in seconds, as a float (NULL when either is NULL)."""

    output_field = FloatField()
    arity = 2

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # EXTRACT returns numeric since PostgreSQL 14: cast, or psycopg hands back Decimals.
        return self.as_sql(
            compiler,
            connection,
            template="EXTRACT(EPOCH FROM (%(expressions)s))::double precision",
            arg_joiner=" - ",
            **extra,
        )

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(
            compiler,
            connection,
            # julianday() is a double of ~10 µs resolution: round to the millisecond, so
            # that a timestamp on a bucket's edge does not fall into the one before.
            template="ROUND((julianday(%(expressions)s)) * 86400.0, 3)",
            arg_joiner=") - julianday(",
            **extra,
        )
