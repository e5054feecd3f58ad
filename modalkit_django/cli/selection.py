"""The rows a subcommand acts on: by id, by filter, or both (the ids within the filter)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from django.core.management.base import CommandError
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from ..models import DeliveryQuerySet, Job, JobQuerySet, JobStatus, QueueDelivery

__all__ = ["count_by_status", "deliveries", "jobs", "missing", "would_cancel", "would_purge", "would_rerun"]


def jobs(options: dict[str, Any], *, require: bool) -> JobQuerySet:
    """Jobs by ``ids``, ``--status``, ``--model`` and ``--older-than`` (creation); with
    ``require``, refuse to select every job by default."""
    ids = _uuids(options.get("ids") or [])
    status, models, older_than = options.get("status"), options.get("model"), options.get("older_than")
    if require and not (ids or status or models or older_than):
        raise CommandError("Name job ids, or select jobs with --status, --model or --older-than.")
    selected = Job.objects.all()
    if ids:
        selected = selected.filter(id__in=ids)
    if status:
        selected = selected.filter(status__in=status)
    if models:
        selected = selected.filter(model_name__in=models)
    if older_than:
        selected = selected.filter(created_at__lt=timezone.now() - older_than)
    return selected


def deliveries(options: dict[str, Any]) -> DeliveryQuerySet:
    """Deliveries by ``ids``, ``--status``, ``--job``, ``--model`` (their job's) and ``--older-than``."""
    ids = _uuids(options.get("ids") or [])
    job_ids = _uuids(options.get("jobs") or [])
    status, models, older_than = options.get("status"), options.get("model"), options.get("older_than")
    if not (ids or job_ids or status or models or older_than):
        raise CommandError("Name delivery ids, or select deliveries with --status, --job, --model or --older-than.")
    selected = QueueDelivery.objects.all()
    if ids:
        selected = selected.filter(id__in=ids)
    if job_ids:
        selected = selected.filter(job_id__in=job_ids)
    if status:
        selected = selected.filter(status__in=status)
    if models:
        selected = selected.filter(job__model_name__in=models)
    if older_than:
        selected = selected.filter(created_at__lt=timezone.now() - older_than)
    return selected


def missing(queryset: QuerySet[Any], ids: Sequence[str]) -> list[str]:
    """The ``ids`` named on the command line that ``queryset``'s model has no row for."""
    wanted = _uuids(ids)
    found = set(queryset.model._default_manager.filter(id__in=wanted).values_list("id", flat=True))
    return [str(row_id) for row_id in wanted if row_id not in found]


def count_by_status(queryset: QuerySet[Any]) -> dict[str, int]:
    return dict(queryset.order_by().values_list("status").annotate(n=Count("id")))


# What each verb would change, for --dry-run: read-only counts, no row locked. They state
# the verbs' own conditions again (tests/test_cli.py holds each to its verb).


def would_cancel(selected: JobQuerySet) -> int:
    """As ``JobQuerySet.cancel``: queued jobs, and running ones on a known Modal call."""
    cancelable = Q(status=JobStatus.QUEUED) | Q(status=JobStatus.RUNNING, modal_call_id__isnull=False)
    return selected.filter(cancelable).count()


def would_rerun(selected: JobQuerySet) -> int:
    """As ``JobQuerySet.rerun``: finished jobs."""
    return selected.filter(status__in=Job.FINISHED).count()


def would_purge(selected: JobQuerySet, *, finished_before: dt.datetime) -> QuerySet[Job]:
    """As ``JobQuerySet.purge_finished``: finished before then, their deliveries all done."""
    return selected.filter(status__in=Job.FINISHED, finished_at__lt=finished_before).exclude(
        deliveries__status__in=QueueDelivery.UNSENT
    )


def _uuids(values: Sequence[str]) -> list[uuid.UUID]:
    ids = []
    for value in values:
        try:
            ids.append(uuid.UUID(str(value)))
        except ValueError as exc:
            raise CommandError(f"Not an id: {value!r}") from exc
    return ids
