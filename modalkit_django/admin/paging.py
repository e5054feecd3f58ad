"""Counting and paging that stay cheap on a table of millions of rows.

Django's changelist counts every matching row (``COUNT(*)``) to draw its paginator, and
at a million rows that count is most of the page's time. Here the unfiltered list takes
PostgreSQL's own estimate (``pg_class.reltuples``, kept by ``ANALYZE`` and autovacuum),
and a filtered one counts at most ``CAP + 1`` rows: "10,000+" is all an operator needs to
know to narrow the filter. Pages stop at ``CAP`` rows, so an ``OFFSET`` never walks far.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property

__all__ = ["CAP", "ScalableChangeList", "ScalablePaginator"]

# Rows counted exactly, and reachable by paging, before the changelist says "more".
CAP = 10_000


class ScalablePaginator(Paginator):  # type: ignore[type-arg]
    """A paginator whose ``count`` is exact up to :data:`CAP`, then capped or estimated."""

    # "exact", "capped" (more than CAP match) or "estimated" (the table's size, from statistics).
    kind = "exact"

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        if not queryset.query.where and (estimate := _estimated_rows(queryset)) > CAP:
            self.kind = "estimated"
            return estimate
        counted = queryset.order_by()[: CAP + 1].count()  # COUNT(*) over a LIMIT subquery
        if counted > CAP:
            self.kind = "capped"
        return counted

    @cached_property
    def num_pages(self) -> int:
        # Never past CAP rows: a deep OFFSET reads every row before it.
        if self.count == 0 and not self.allow_empty_first_page:
            return 0
        pages = math.ceil(max(1, self.count - self.orphans) / self.per_page)
        return min(pages, max(1, math.ceil(CAP / self.per_page)))

    @property
    def label(self) -> str:
        if self.kind == "estimated":
            return f"about {self.count:,}"
        if self.kind == "capped":
            return f"{CAP:,}+"
        return f"{self.count:,}"


def _estimated_rows(queryset: QuerySet[Any]) -> int:
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return -1
    with connection.cursor() as cursor:
        # -1 (PostgreSQL ≥ 14) when the table was never analyzed: then it is counted.
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)", [queryset.model._meta.db_table]
        )
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None else -1


class ScalableChangeList(ChangeList):
    """Reads only the columns the list shows, and labels the count for what it is."""

    count_label = ""

    def get_results(self, request: HttpRequest) -> None:
        # Only the rows shown skip the deferred columns; actions get the full queryset
        # (cl.get_queryset), as their verbs write whole rows back.
        deferred = getattr(self.model_admin, "list_defer", ())
        if deferred:
            self.queryset = self.queryset.defer(*deferred)
        super().get_results(request)
        self.count_label = self.paginator.label if isinstance(self.paginator, ScalablePaginator) else ""

    def get_ordering(self, request: HttpRequest, queryset: QuerySet[Any]) -> list[Any]:
        ordering = list(super().get_ordering(request, queryset))
        if all(isinstance(field, str) and field.lstrip("-") == "pk" for field in ordering):
            # Only unsortable columns were asked for: the default order, not the bare primary key's.
            default: Sequence[Any] = self.model_admin.get_ordering(request) or self.lookup_opts.ordering or ()
            ordering = [*default, *ordering]
        return ordering

    def get_ordering_field(self, field_name: Any) -> Any:
        # Django sorts by any column named in the URL (?o=3), sortable_by or not; only the
        # columns an index serves are sortable here.
        if self.sortable_by is not None and field_name not in self.sortable_by:
            return None
        return super().get_ordering_field(field_name)
