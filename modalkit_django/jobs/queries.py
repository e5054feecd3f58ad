"""Reading jobs as an API caller sees them: one by id, or a page of its own."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Prefetch, Q

from ..exceptions import JobNotFound
from ..models import Job, QueueDelivery

__all__ = ["get_job", "list_jobs"]

# What the API shows of a job's deliveries: never their payloads (up to megabytes each).
_DELIVERIES = Prefetch("deliveries", queryset=QueueDelivery.objects.defer("payload"))


def get_job(*, job_id: uuid.UUID | str, owner: Any) -> Job:
    """The caller's job with its deliveries; :class:`JobNotFound` for anyone else's."""
    try:
        return Job.objects.for_owner(owner).prefetch_related(_DELIVERIES).get(id=job_id)
    except (Job.DoesNotExist, ValidationError) as exc:
        raise JobNotFound(job_id) from exc


def list_jobs(
    *,
    owner: Any,
    status: str | None = None,
    model_name: str | None = None,
    limit: int = 20,
    before: uuid.UUID | str | None = None,
) -> tuple[list[Job], Job | None]:
    """The owner's jobs, newest first, ``limit`` at a time, after the job ``before``.

    Returns the page and the job to pass as ``before`` for the next one (or ``None``).
    """
    # A page shows no job's input (up to megabytes each).
    jobs = Job.objects.for_owner(owner).defer("message").prefetch_related(_DELIVERIES).order_by("-created_at", "-id")
    if status:
        jobs = jobs.filter(status=status)
    if model_name:
        jobs = jobs.filter(model_name=model_name)
    if before is not None:
        cursor = get_job(job_id=before, owner=owner)
        jobs = jobs.filter(Q(created_at__lt=cursor.created_at) | Q(created_at=cursor.created_at, id__lt=cursor.id))
    page = list(jobs[: limit + 1])
    return page[:limit], (page[limit - 1] if len(page) > limit else None)
