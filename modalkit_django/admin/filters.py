"""List filters that never read the table to draw themselves.

Django's filter on a plain text field lists its values with ``SELECT DISTINCT`` over the
whole table: seconds at a million rows. Here the choices come from configuration (the
models of ``modalkit.yaml``, the aliases of ``MODALKIT["QUEUES"]``), and free text (a queue,
an owner, a batch) is typed into a box and matched exactly, through an index.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import BadRequest
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.http import HttpRequest

from ..conf import get_config, get_settings
from ..models import JobStatus

__all__ = [
    "BackendFilter",
    "BatchFilter",
    "HostnameFilter",
    "InputFilter",
    "ModelNameFilter",
    "OwnerFilter",
    "QueueNameFilter",
    "StatusFilter",
]


class ModelNameFilter(admin.SimpleListFilter):
    title = "model"
    parameter_name = "model_name"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = list(get_config().model_settings.model_entries)
        # A model no longer configured can still be asked for in the URL, and is then shown.
        if (value := self.value()) and value not in names:
            names.append(value)
        return [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        return queryset.filter(model_name=self.value()) if self.value() else queryset


SCHEDULED = "scheduled"


class StatusFilter(admin.SimpleListFilter):
    """A job's status, with the queued jobs not yet due (a ``run_after`` or a retry's
    backoff ahead) apart as "scheduled": "queued" lists only the jobs waiting for a worker now.

    Its parameter is the one Django's own status filter had (``status__exact``), so every
    link to the list by status (the dashboard's, a batch's) keeps working. Queued and
    scheduled are one range each of the partial index on queued jobs' ``queued_at`` (when
    they are due), by the database's clock.
    """

    title = "status"
    parameter_name = "status__exact"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        choices = [(status.value, str(status.label)) for status in JobStatus]
        return [*choices[:1], (SCHEDULED, "Scheduled"), *choices[1:]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        value = self.value()
        if value == JobStatus.QUEUED:
            return queryset.filter(status=JobStatus.QUEUED, queued_at__lte=Now())
        if value == SCHEDULED:
            return queryset.filter(status=JobStatus.QUEUED, queued_at__gt=Now())
        return queryset.filter(status=value) if value else queryset


class BackendFilter(admin.SimpleListFilter):
    title = "backend"
    parameter_name = "backend"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        aliases = list(get_settings().queues)
        if (value := self.value()) and value not in aliases:
            aliases.append(value)
        return [(alias, alias) for alias in aliases]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        return queryset.filter(backend=self.value()) if self.value() else queryset


class InputFilter(admin.SimpleListFilter):
    """A text box: the value typed is matched exactly against the field ``parameter_name``
    names (subclasses that match otherwise override :meth:`filter`)."""

    template = "admin/modalkit_django/input_filter.html"
    placeholder = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("", "")]  # one choice, so that Django draws the filter at all

    def choices(self, changelist: ChangeList) -> Iterator[Any]:
        # The box submits with the page's other filters (and search) kept as hidden fields.
        others = [
            (name, value)
            for name, values in changelist.params.items()
            if name != self.parameter_name and name != "p"
            for value in (values if isinstance(values, list) else [values])
        ]
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[str(self.parameter_name)]),
            "display": "All",
            "value": self.value() or "",
            "others": others,
            "parameter_name": self.parameter_name,
            "placeholder": self.placeholder,
        }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        value = (self.value() or "").strip()
        return self.filter(queryset, value) if value else queryset

    def filter(self, queryset: QuerySet[Any], value: str) -> QuerySet[Any]:
        return queryset.filter(**{str(self.parameter_name): value})


class QueueNameFilter(InputFilter):
    title = "queue name"
    parameter_name = "queue_name"
    placeholder = "exact queue name"


class HostnameFilter(InputFilter):
    title = "hostname"
    parameter_name = "hostname"
    placeholder = "exact hostname"


class OwnerFilter(InputFilter):
    title = "owner"
    parameter_name = "owner"
    placeholder = "username"

    def filter(self, queryset: QuerySet[Any], value: str) -> QuerySet[Any]:
        # The user's id first, then the owner's index: joined, the planner cannot know how
        # many jobs one user has, and walks the newest-first index past all the others'.
        users = queryset.model._meta.get_field("owner").related_model
        owner = users._default_manager.filter(**{users.USERNAME_FIELD: value}).values_list("pk", flat=True).first()
        return queryset.filter(owner_id=owner) if owner is not None else queryset.none()


class BatchFilter(InputFilter):
    title = "batch"
    parameter_name = "batch"
    placeholder = "batch id"

    def filter(self, queryset: QuerySet[Any], value: str) -> QuerySet[Any]:
        try:
            return queryset.filter(batch_id=uuid.UUID(value))
        except ValueError as exc:
            raise BadRequest(f"The batch filter takes a batch id (a UUID), not {value[:40]!r}.") from exc
