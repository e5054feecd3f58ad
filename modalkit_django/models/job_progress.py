"""What a running pipeline reported: its latest progress and its partial outputs so far.

The worker gathers a batch's reports for a moment and writes them with
:meth:`ProgressQuerySet.report_progress`, one statement for the batch, so that a chatty
generator costs PostgreSQL a few statements a second, not one per token. Only a job still
running under the reporting worker's lease is written: a job reclaimed, finished or
canceled meanwhile keeps what it has. Partial outputs are appended in the database
(``jsonb || jsonb``), so a write never sends back what is already stored.

The job QuerySet's verbs are a chain of mixins (this one on
:class:`~.job_calls.CallQuerySet`): one base each, so that the managers type-check.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction

from .job_calls import CallQuerySet
from .states import JobStatus

if TYPE_CHECKING:
    from .jobs import Job

__all__ = ["ProgressQuerySet", "ProgressReport"]


@dataclass
class ProgressReport:
    """One job's news since the last write.

    ``progress``/``message`` of ``None`` leave the stored values alone; ``outputs`` are
    appended; ``reset`` first clears what an earlier attempt stored.
    """

    job_id: uuid.UUID
    progress: float | None = None
    message: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    reset: bool = False


class ProgressQuerySet(CallQuerySet):
    def report_progress(self, reports: Sequence[ProgressReport], *, token: uuid.UUID) -> set[uuid.UUID]:
        """Write the reports of jobs still running under lease ``token``; return their ids."""
        if not reports:
            return set()
        if connections[self.db].vendor == "postgresql":
            return self._report_postgres(reports, token)
        with transaction.atomic(savepoint=False, using=self.db):
            jobs = self.select_for_update().filter(
                id__in=[report.job_id for report in reports], status=JobStatus.RUNNING, lease_token=token
            )
            held = {job.id: job for job in jobs}
            for report in reports:
                if (job := held.get(report.job_id)) is not None:
                    _apply(job, report)
                    job.save(update_fields=["progress", "progress_message", "partial_outputs"])
        return set(held)

    def _report_postgres(self, reports: Sequence[ProgressReport], token: uuid.UUID) -> set[uuid.UUID]:
        table = self.model._meta.db_table
        sql = (
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
        with connections[self.db].cursor() as cursor:
            cursor.execute(sql, params)
            return {row[0] for row in cursor.fetchall()}


def _apply(job: Job, report: ProgressReport) -> None:
    if report.reset:
        job.progress, job.progress_message, job.partial_outputs = None, "", []
    if report.progress is not None:
        job.progress = report.progress
    if report.message is not None:
        job.progress_message = report.message
    job.partial_outputs = [*job.partial_outputs, *report.outputs]
