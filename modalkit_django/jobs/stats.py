"""Counts for operators: jobs by model and status, deliveries by backend and status.

Two aggregate queries, whatever the number of rows: :func:`job_stats`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Min
from django.utils import timezone

from ..models import Job, JobStatus, QueueDelivery

__all__ = ["JobStats", "job_stats"]


@dataclass(frozen=True)
class JobStats:
    jobs: dict[str, dict[str, int]]  # model → status → count
    deliveries: dict[str, dict[str, int]]  # backend alias → status → count
    oldest_queued_at: dt.datetime | None
    oldest_queued_model: str | None

    @property
    def jobs_by_status(self) -> dict[str, int]:
        return _totals(self.jobs, JobStatus.values)

    @property
    def deliveries_by_status(self) -> dict[str, int]:
        return _totals(self.deliveries, QueueDelivery.Status.values)

    def oldest_queued_seconds(self, now: dt.datetime | None = None) -> float | None:
        if self.oldest_queued_at is None:
            return None
        return max(0.0, ((now or timezone.now()) - self.oldest_queued_at).total_seconds())

    def as_dict(self) -> dict[str, Any]:
        return {
            "jobs": {"by_status": self.jobs_by_status, "by_model": self.jobs},
            "oldest_queued": {
                "queued_at": self.oldest_queued_at,
                "age_seconds": self.oldest_queued_seconds(),
                "model": self.oldest_queued_model,
            },
            "deliveries": {"by_status": self.deliveries_by_status, "by_backend": self.deliveries},
        }


def job_stats() -> JobStats:
    """Jobs by model and status with the oldest queued job, and deliveries by backend and status."""
    jobs: dict[str, dict[str, int]] = {}
    oldest: tuple[dt.datetime, str] | None = None
    # queued_at: when the job last entered the queue (submitted, or re-run).
    rows = Job.objects.order_by().values_list("model_name", "status").annotate(n=Count("id"), oldest=Min("queued_at"))
    for model_name, status, count, queued_at in rows:
        jobs.setdefault(model_name, {})[status] = count
        if status == JobStatus.QUEUED and (oldest is None or queued_at < oldest[0]):
            oldest = (queued_at, model_name)
    deliveries: dict[str, dict[str, int]] = {}
    for backend, status, count in (
        QueueDelivery.objects.order_by().values_list("backend", "status").annotate(n=Count("id"))
    ):
        deliveries.setdefault(backend, {})[status] = count
    return JobStats(
        jobs=jobs,
        deliveries=deliveries,
        oldest_queued_at=oldest[0] if oldest else None,
        oldest_queued_model=oldest[1] if oldest else None,
    )


def _totals(counts: dict[str, dict[str, int]], statuses: list[str]) -> dict[str, int]:
    return {status: sum(row.get(status, 0) for row in counts.values()) for status in statuses}
