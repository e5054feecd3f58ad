"""The Modal call a running job waits on, stored so that it outlives its worker.

An inference backend with detached calls (Modal's ``.spawn``) starts each job's call,
then the worker stores the call ids, one statement per batch, before it waits. A worker
that dies leaves the id behind; the next one to claim the job re-attaches to that call
instead of starting a second one, and a cancel reaches the call through it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from django.db import connections, models, transaction

from . import postgres
from .states import JobStatus, save_rows

if TYPE_CHECKING:
    from .jobs import Job

__all__ = ["CallQuerySet"]


class CallQuerySet(models.QuerySet["Job"]):
    def attach_calls(self, jobs: Sequence[Job]) -> set[uuid.UUID]:
        """Store the ``modal_call_id`` set on each claimed job, where its lease still holds.

        Returns the ids of the jobs written; the others were reclaimed or canceled
        meanwhile, and their calls belong to nobody.
        """
        calls = [job for job in jobs if job.modal_call_id]
        if not calls:
            return set()
        tokens = {job.lease_token for job in calls}
        if connections[self.db].vendor == "postgresql" and len(tokens) == 1:
            [token] = tokens
            assert token is not None
            pairs = [(job.id, job.modal_call_id or "") for job in calls]
            return postgres.attach_calls(self.model, pairs, token=token, using=self.db)
        with transaction.atomic(savepoint=False, using=self.db):
            held = set(
                self.select_for_update()
                .filter(id__in=[job.id for job in calls], status=JobStatus.RUNNING, lease_token__in=tokens)
                .values_list("id", flat=True)
            )
            rows = [job for job in calls if job.id in held]
            if rows:
                save_rows(self.model, rows, ["modal_call_id"], using=self.db)
        return held
