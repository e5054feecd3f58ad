"""The state machine's ORM paths: what the embedded default (SQLite) runs.

PostgreSQL takes one statement per step (models/postgres.py); every other database the
ORM's locked, multi-statement version of the same steps. These run them on SQLite.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from modalkit_django.conf import get_settings
from modalkit_django.exceptions import DeliveryError, InferenceUnavailable, PipelineError
from modalkit_django.jobs.messages import deliveries_for
from modalkit_django.models import Job, QueueDelivery, SendResult

from .flow import OUTPUT

EMBEDDED = "embedded"
pytestmark = pytest.mark.django_db(databases=["default", EMBEDDED])

jobs = Job.objects.db_manager(EMBEDDED)
sends = QueueDelivery.objects.db_manager(EMBEDDED)


def queued(count: int, **fields: Any) -> list[Job]:
    # Due when the database made them (queued_at's default): a time written from Python,
    # to the microsecond, would read as later than SQLite's now() (to the millisecond)
    # within the same millisecond.
    return jobs.bulk_create(Job(model_name="sentiment", message={"text": f"good {n}"}, **fields) for n in range(count))


def finish(results: list[tuple[Job, Any]]) -> list[QueueDelivery]:
    return jobs.finish(
        results,
        max_attempts=3,
        retry_backoff_seconds=5,
        deliveries_for=lambda finished: deliveries_for(finished, timezone.now(), sent_by_caller=True),
    )


def test_claim_finish_and_record_on_sqlite() -> None:
    first, second, third = queued(3, success_queue="q", failure_queue="e")
    claimed = jobs.claim(limit=10, lease_seconds=30)
    assert {job.id for job in claimed} == {first.id, second.id, third.id}
    assert jobs.claim(limit=10, lease_seconds=30) == []  # a duplicate claims nothing
    by_id = {job.id: job for job in claimed}
    delivered = finish(
        [
            (by_id[first.id], OUTPUT),
            (by_id[second.id], PipelineError("boom")),
            (by_id[third.id], InferenceUnavailable("down")),
        ]
    )
    assert {(d.job_id, d.route) for d in delivered} == {(first.id, "success"), (second.id, "failure")}
    assert dict(jobs.values_list("id", "status")) == {first.id: "succeeded", second.id: "failed", third.id: "queued"}
    assert sends.count() == 2
    success = sends.get(job_id=first.id)
    stale = sends.get(job_id=first.id)
    sends.record([SendResult(success, external_id="x")], policy=get_settings().delivery)
    sends.record([SendResult(stale, error=DeliveryError("late"))], policy=get_settings().delivery)
    assert sends.values_list("status", "attempts", "external_id").get(job_id=first.id) == ("sent", 1, "x")


def test_a_run_whose_lease_was_reclaimed_is_dropped_on_sqlite() -> None:
    [job] = queued(1, success_queue="q")
    [claimed] = jobs.claim(limit=10, lease_seconds=30)
    jobs.filter(id=job.id).update(status="queued", lease_token=None)  # the sweep reclaimed it
    assert finish([(claimed, OUTPUT)]) == []
    assert jobs.get(id=job.id).status == "queued"
    assert not sends.exists()


def test_the_sweep_verbs_on_sqlite() -> None:
    [lost] = queued(1)
    assert len(jobs.claim(limit=10, lease_seconds=30)) == 1
    jobs.filter(id=lost.id).update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    requeued, failed = jobs.reclaim_expired(max_attempts=3, limit=10)
    assert ([job.id for job in requeued], failed) == ([lost.id], [])
    [old] = queued(1)
    jobs.filter(id=old.id).update(queued_at=timezone.now() - dt.timedelta(hours=2))
    assert [job.id for job in jobs.expire_waiting(timeout=3600, limit=10)] == [old.id]
    assert lost.id in set(jobs.runnable().values_list("id", flat=True))  # due again at once
    jobs.filter(id=old.id).update(finished_at=timezone.now() - dt.timedelta(days=30))
    assert jobs.purge_finished(older_than=86400, limit=10) == 1
