"""The job and delivery state machine: the QuerySet verbs, batch by batch."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

import modalkit_django
from modalkit_django.exceptions import (
    DeliveryError,
    InferenceUnavailable,
    PermanentDeliveryError,
    PipelineError,
)
from modalkit_django.models import Job, QueueDelivery, SendResult

from . import flow
from .flow import OUTPUT, claim_one, pending_delivery, with_modalkit

pytestmark = pytest.mark.django_db


submit = flow.submit


def test_claim_takes_a_job_once() -> None:
    job = submit()
    claimed = claim_one(job)
    assert claimed.status == Job.Status.RUNNING
    assert claimed.attempts == 1
    assert claimed.lease_token is not None
    job.refresh_from_db()
    assert (job.status, job.attempts, job.lease_token) == ("running", 1, claimed.lease_token)
    assert job.lease_expires_at > timezone.now()
    # A duplicate message finds nothing to claim.
    assert flow.claim([job.id]) == []


def test_claim_skips_jobs_not_yet_due() -> None:
    job = submit()
    Job.objects.filter(id=job.id).update(run_after=timezone.now() + dt.timedelta(minutes=1))
    assert flow.claim([job.id]) == []


def test_claim_takes_a_whole_batch() -> None:
    jobs = [submit() for _ in range(5)]
    claimed = flow.claim([job.id for job in jobs])
    assert {job.id for job in claimed} == {job.id for job in jobs}
    assert len({job.lease_token for job in claimed}) == 1


def test_claimed_jobs_are_whole_instances_as_the_orm_loads_them(django_assert_num_queries: Any) -> None:
    job = modalkit_django.submit_job(message={"text": "a good film"}, meta={"trace": [1, 2]}, success_queue="q")
    [claimed] = flow.claim([job.id])
    loaded = Job.objects.get(id=job.id)
    with django_assert_num_queries(0):  # nothing deferred: no query per field read
        fields = {field.attname: getattr(claimed, field.attname) for field in Job._meta.concrete_fields}
    assert fields == {field.attname: getattr(loaded, field.attname) for field in Job._meta.concrete_fields}
    assert claimed.message == {"text": "a good film"} and claimed.meta == {"trace": [1, 2]}
    assert not claimed._state.adding and claimed._state.db == "default"


@pytest.mark.skipif(settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql", reason="PostgreSQL")
def test_the_hot_statements_send_their_parameters_apart() -> None:
    from modalkit_django.models import sql as postgres

    with postgres._server_side_cursor("default") as cursor:
        # Bound client-side, 7 would be the literal integer; sent apart, psycopg types it.
        cursor.execute("SELECT pg_typeof(%s)::text, %b::uuid[]", [7, [str(job.id) for job in [submit()]]])
        typed, ids = cursor.fetchone()
    assert typed == "smallint"
    assert len(ids) == 1


@pytest.mark.skipif(settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql", reason="PostgreSQL")
def test_the_hot_path_writes_no_index_that_serves_nothing() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename, indexdef FROM pg_indexes WHERE tablename IN (%s, %s)",
            [Job._meta.db_table, QueueDelivery._meta.db_table],
        )
        indexes = cursor.fetchall()
        batch = flow.submit().id  # any id: the plan is what is asked
        cursor.execute(f"EXPLAIN SELECT id FROM {Job._meta.db_table} WHERE batch_id = %s", [batch])
        plan = " ".join(row[0] for row in cursor.fetchall())
    definitions = [definition.split(" USING ")[1] for _, definition in indexes]
    # owner_id leads modalkit_job_owner_idx; batch_id has a partial index; no LIKE index.
    assert "btree (owner_id)" not in definitions and "btree (batch_id)" not in definitions
    assert "btree (batch_id) WHERE (batch_id IS NOT NULL)" in definitions
    assert not any("varchar_pattern_ops" in definition for definition in definitions)
    assert "modalkit_job_batch_idx" in plan


@pytest.mark.skipif(settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql", reason="PostgreSQL")
def test_the_hot_statements_find_their_rows_by_an_index_in_their_own_order() -> None:
    """The claim reads the queued jobs' partial index in its own order (priority, due) and
    stops after its limit: no scan of the table, no sort of the backlog, and jobs due later
    are past the end of the range it reads. Finish and record find their rows by primary
    key, not by a scan of every running job or unsent delivery."""
    import uuid

    from modalkit_django.models import sql

    now = timezone.now()
    jobs = Job.objects.bulk_create(
        Job(model_name="sentiment", message={}, success_queue="q", created_at=now) for _ in range(3000)
    )
    later = now + dt.timedelta(hours=1)
    Job.objects.bulk_create(  # scheduled: never read by a claim before they are due
        Job(model_name="sentiment", message={}, created_at=now, queued_at=later, run_after=later) for _ in range(2000)
    )
    token = uuid.uuid4()
    Job.objects.filter(id__in=[job.id for job in jobs[:400]]).update(status="running", lease_token=token)
    deliveries = QueueDelivery.objects.bulk_create(
        QueueDelivery(job=job, route="success", queue_name="q", backend="memory", message_id=str(job.id),
                      payload={}, status="retrying", next_attempt_at=now, created_at=now, attempts_since=now)
        for job in jobs[400:1400]
    )  # fmt: skip
    outcomes = [(job.id, token, "succeeded", "{}", None, 0.0) for job in jobs[:100]]
    sends = {
        "ids": [delivery.id for delivery in deliveries[:100]], "previous": [0] * 100, "since": [now] * 100,
        "status": ["sent"] * 100, "attempts": [1] * 100, "external": [""] * 100, "delay": [0.0] * 100,
        "error": [""] * 100, "max_age": 86400.0,
    }  # fmt: skip
    claim = {"limit": 100, "token": token, "lease": 30.0, "ids": None}
    statements = [
        (sql._claim_sql(Job, among_ids=False), claim),
        (sql._finish_sql(Job), [*sql._columns(outcomes, 6), *sql._columns([], len(sql.DELIVERY_FIELDS))]),
        (sql._record_sql(QueueDelivery), sends),
    ]
    plans = []
    with sql._server_side_cursor("default") as cursor:
        cursor.execute(f"ANALYZE {Job._meta.db_table}, {QueueDelivery._meta.db_table}")
        for statement, params in statements:
            cursor.execute("EXPLAIN " + statement, params)
            plans.append(" ".join(row[0] for row in cursor.fetchall()))
    by_key = r"Bitmap Index Scan on {}_pkey .{{0,80}}Index Cond: \(id = ANY \(\$\d+\)\)"
    claim_plan, finish_plan, record_plan = plans
    assert re.search(r"Limit .{0,200}LockRows .{0,200}Index Scan using modalkit_job_priority_idx", claim_plan)
    assert "queued_at <= statement_timestamp()" in claim_plan  # an index condition: the range ends at now
    assert "Sort" not in claim_plan and "Seq Scan" not in claim_plan
    assert re.search(by_key.format(Job._meta.db_table), claim_plan)  # the update
    assert re.search(by_key.format(Job._meta.db_table), finish_plan)  # not of every running job
    assert re.search(by_key.format(QueueDelivery._meta.db_table), record_plan)
    assert "modalkit_delivery_due_idx" not in record_plan  # not of every unsent delivery


def test_finish_success_stores_the_result_and_a_success_delivery() -> None:
    job = claim_one(submit(success_queue="ok", failure_queue="err", meta={"r": 1}))
    [delivery] = flow.finish([(job, OUTPUT)])
    job.refresh_from_db()
    assert (job.status, job.result, job.error, job.lease_token) == ("succeeded", OUTPUT, None, None)
    assert job.finished_at is not None
    assert (delivery.route, delivery.queue_name, delivery.backend, delivery.status) == (
        "success",
        "ok",
        "memory",
        "pending",
    )
    assert delivery.message_id == f"{job.id}:success"
    assert delivery.payload == {
        **OUTPUT,
        "job_id": str(job.id),
        "model_name": "sentiment",
        "meta": {"r": 1},
        "timestamp": delivery.payload["timestamp"],
        "submitted_by": {"owner_id": None, "api_key": ""},
    }
    # The sweep leaves it to the worker that is sending it now.
    assert delivery.next_attempt_at > timezone.now()


def test_finish_failure_delivers_the_error_and_the_original_request() -> None:
    job = claim_one(submit(success_queue="ok", failure_queue="err", meta={"r": 2}))
    [delivery] = flow.finish([(job, PipelineError("boom", error_type="ValueError"))])
    job.refresh_from_db()
    assert (job.status, job.result, job.error) == ("failed", None, {"type": "ValueError", "message": "boom"})
    assert (delivery.route, delivery.queue_name) == ("failure", "err")
    assert delivery.payload["status"] == "error"
    assert delivery.payload["error"] == "boom"
    assert delivery.payload["error_type"] == "ValueError"
    assert delivery.payload["original_message"] == {
        "message": {"text": "good"},
        "success_queue": "ok",
        "failure_queue": "err",
        "meta": {"r": 2},
    }


@pytest.mark.parametrize("prediction", [OUTPUT, PipelineError("boom")])
def test_no_queue_no_delivery(prediction: Any) -> None:
    job = claim_one(submit())
    assert flow.finish([(job, prediction)]) == []
    assert not QueueDelivery.objects.exists()
    job.refresh_from_db()
    assert job.is_finished


def test_transient_error_requeues_with_backoff_until_attempts_run_out() -> None:
    job = claim_one(submit(failure_queue="err"))
    assert flow.finish([(job, InferenceUnavailable("modal is down"))]) == []
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED
    assert job.error == {"type": "InferenceUnavailable", "message": "modal is down"}
    assert job.run_after > timezone.now()
    assert job.queued_at == job.run_after  # due again after its backoff: claims pass it over until then

    max_attempts = 3
    for _ in range(max_attempts - 1):
        Job.objects.filter(id=job.id).update(run_after=None, queued_at=timezone.now())
        job = claim_one(job)
        deliveries = flow.finish([(job, InferenceUnavailable("modal is down"))])
    job.refresh_from_db()
    assert job.attempts == max_attempts
    assert job.status == Job.Status.FAILED
    assert [delivery.route for delivery in deliveries] == ["failure"]


def test_a_run_whose_lease_was_reclaimed_does_not_finish_the_job() -> None:
    job = claim_one(submit(success_queue="q"))
    # The sweep reclaimed it and another worker claimed it again.
    Job.objects.filter(id=job.id).update(status=Job.Status.QUEUED, lease_token=None)
    second = claim_one(job)
    assert flow.finish([(job, OUTPUT)]) == []
    second.refresh_from_db()
    assert second.status == Job.Status.RUNNING
    assert flow.finish([(second, OUTPUT)])[0].route == "success"


def test_record_a_send() -> None:
    delivery = pending_delivery()
    flow.record([SendResult(delivery, external_id="msg-1")])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.external_id) == ("sent", 1, "msg-1")
    assert delivery.sent_at is not None
    assert delivery.next_attempt_at is None


def test_failed_send_retries_with_exponential_backoff_and_jitter() -> None:
    delivery = pending_delivery()
    policy = settings.MODALKIT.get("DELIVERY", {})
    base = policy.get("BACKOFF_SECONDS", 2.0)
    for attempt in (1, 2, 3):
        before = timezone.now()
        flow.record([SendResult(delivery, error=DeliveryError("down"))])
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts) == ("retrying", attempt)
        assert delivery.last_error == "DeliveryError: down"
        delay = (delivery.next_attempt_at - before).total_seconds()
        assert base * 2 ** (attempt - 1) * 0.5 - 0.1 <= delay <= base * 2 ** (attempt - 1) + 0.1


def test_delivery_is_dead_after_max_attempts() -> None:
    delivery = pending_delivery()
    with with_modalkit(DELIVERY={"MAX_ATTEMPTS": 2}):
        for _ in range(2):
            flow.record([SendResult(delivery, error=DeliveryError("down"))])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("dead", 2, None)


def test_permanent_error_is_dead_at_once() -> None:
    delivery = pending_delivery()
    flow.record([SendResult(delivery, error=PermanentDeliveryError("410 Gone"))])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("dead", 1)


def test_delivery_older_than_max_age_is_dead() -> None:
    delivery = pending_delivery()
    QueueDelivery.objects.filter(id=delivery.id).update(attempts_since=timezone.now() - dt.timedelta(days=2))
    delivery.refresh_from_db()
    flow.record([SendResult(delivery, error=DeliveryError("down"))])
    delivery.refresh_from_db()
    assert delivery.status == "dead"


def test_unsent_delivery_ignores_sent_and_dead_ones() -> None:
    delivery = pending_delivery()
    assert QueueDelivery.objects.unsent().filter(id=delivery.id).first() == delivery
    flow.record([SendResult(delivery, external_id="x")])
    assert QueueDelivery.objects.unsent().filter(id=delivery.id).first() is None


def test_an_output_over_max_result_bytes_fails_only_its_own_job_saying_why() -> None:
    jobs = flow.claim([submit(failure_queue="e").id for _ in range(2)])
    big = {"status": "success", "sentiment": "x" * 2000}
    with with_modalkit(WORKER={"MAX_RESULT_BYTES": 1000}):
        flow.finish([(jobs[0], OUTPUT), (jobs[1], big)])
    small, large = (Job.objects.get(id=job.id) for job in jobs)
    assert (small.status, small.result) == ("succeeded", OUTPUT)
    assert (large.status, large.result, large.error["type"]) == ("failed", None, "PipelineError")
    assert "over MODALKIT['WORKER']['MAX_RESULT_BYTES'] (1,000)" in large.error["message"]
    assert large.deliveries.get().route == "failure"


def test_an_output_the_database_refuses_fails_only_its_own_job() -> None:
    jobs = flow.claim([submit(failure_queue="e").id for _ in range(3)])
    outputs = [OUTPUT, {**OUTPUT, "note": "a\x00b"}, {**OUTPUT, "confidence": float("nan")}]
    flow.finish(list(zip(jobs, outputs, strict=True)))
    statuses = [Job.objects.get(id=job.id) for job in jobs]
    assert [job.status for job in statuses] == ["succeeded", "failed", "failed"]
    assert statuses[1].error["message"] == "The model's output cannot be stored: it contains a NUL character (\\u0000)"
    assert "nan" in statuses[2].error["message"]


def test_an_error_message_with_a_nul_is_stored() -> None:
    [job] = flow.claim([submit().id])
    flow.finish([(job, PipelineError("bad\x00byte", error_type="ValueError"))])
    job.refresh_from_db()
    assert job.error == {"type": "ValueError", "message": "bad\\x00byte"}


def test_a_redelivery_gets_a_fresh_age_budget() -> None:
    delivery = pending_delivery()
    flow.record([SendResult(delivery, error=PermanentDeliveryError("no"))])
    QueueDelivery.objects.filter(id=delivery.id).update(attempts_since=timezone.now() - dt.timedelta(days=2))
    modalkit_django.redeliver(delivery=delivery)
    flow.record([SendResult(delivery, error=DeliveryError("still down"))])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("retrying", 1)


def test_a_late_result_does_not_overwrite_a_delivery_recorded_meanwhile() -> None:
    delivery = pending_delivery()
    stale = QueueDelivery.objects.get(id=delivery.id)
    flow.record([SendResult(delivery, external_id="sent-by-the-sweep")])
    flow.record([SendResult(stale, error=DeliveryError("timed out"))])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.external_id) == ("sent", 1, "sent-by-the-sweep")


def test_a_redelivery_during_a_first_send_is_not_absorbed_by_its_late_result() -> None:
    """The first send is in flight (attempts 0); an operator redelivers, which also sets
    attempts to 0: a compare-and-set on attempts alone took the late result for the
    redelivery's (ABA) and absorbed it. The budget's start only grows: it tells them apart."""
    delivery = pending_delivery()
    in_flight = QueueDelivery.objects.get(id=delivery.id)  # attempts=0: the first send, under way
    modalkit_django.redeliver(delivery=delivery)
    flow.record([SendResult(in_flight, error=DeliveryError("the receiver is down"))])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("pending", 0, "")
    # The redelivery's own attempt is recorded as usual.
    flow.record([SendResult(delivery, external_id="x")])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 1)


def test_a_late_result_does_not_undo_a_redelivery() -> None:
    delivery = pending_delivery()
    flow.record([SendResult(delivery, error=DeliveryError("down"))])
    in_flight = QueueDelivery.objects.get(id=delivery.id)  # attempts=1, being retried
    modalkit_django.redeliver(delivery=delivery)
    flow.record([SendResult(in_flight, error=DeliveryError("down again"))])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 0)
