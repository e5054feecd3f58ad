"""The worker's batch path, run in this process against Postgres."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone

import modalkit_django
from modalkit_django.clients import get_inference_backend
from modalkit_django.exceptions import InferenceUnavailable
from modalkit_django.models import Job, QueueDelivery
from modalkit_django.queues.memory import MemoryBackend
from modalkit_django.worker import database, engine, sweeper

from . import flow
from .doubles import FailingQueue, ScriptedInference

pytestmark = pytest.mark.django_db


@pytest.fixture
def scripted() -> Iterator[ScriptedInference]:
    modalkit = {**settings.MODALKIT, "INFERENCE": {"BACKEND": "tests.doubles.ScriptedInference"}}
    with override_settings(MODALKIT=modalkit):
        backend = get_inference_backend()
        assert isinstance(backend, ScriptedInference)
        yield backend


def submit(text: str = "good", **kwargs: Any) -> Job:
    return modalkit_django.submit_job(message={"text": text}, **kwargs)


def test_a_batch_runs_the_real_pipeline_and_delivers(run_async: Any, memory_queue: MemoryBackend) -> None:
    good = submit("a great film", success_queue="results", meta={"n": 1})
    bad = submit("explode", success_queue="results", failure_queue="errors")
    run_async(flow.process_batch, [str(good.id), str(bad.id)])

    good.refresh_from_db()
    bad.refresh_from_db()
    assert (good.status, good.result["sentiment"]) == ("succeeded", "positive")
    assert (bad.status, bad.error["type"]) == ("failed", "ValueError")
    [success] = memory_queue.messages["results"]
    [failure] = memory_queue.messages["errors"]
    assert success.payload["job_id"] == str(good.id)
    assert success.payload["meta"] == {"n": 1}
    assert success.message_id == f"{good.id}:success"
    assert failure.payload["original_message"]["message"] == {"text": "explode"}
    assert set(QueueDelivery.objects.values_list("status", "attempts")) == {("sent", 1)}


def test_one_claim_takes_what_is_runnable_as_one_batch_and_one_model_call(
    run_async: Any, scripted: ScriptedInference
) -> None:
    jobs = [submit(f"text {n}") for n in range(20)]

    async def one_claim() -> list[Job]:
        return await engine.get_engine().process_batch(100)

    ran = run_async(one_claim)
    assert {job.id for job in ran} == {job.id for job in jobs}
    assert len(scripted.calls) == 1
    assert len(scripted.inputs) == 20
    assert set(Job.objects.values_list("status", flat=True)) == {"succeeded"}


def test_a_second_claim_finds_nothing_so_nothing_runs_twice(run_async: Any, scripted: ScriptedInference) -> None:
    job = submit()

    async def twice() -> None:
        # Two claims at once (two wake-ups, two workers), then a late third.
        await asyncio.gather(engine.get_engine().process_batch(10), engine.get_engine().process_batch(10))
        await engine.get_engine().process_batch(10)

    run_async(twice)
    assert scripted.inputs == [{"text": "good"}]
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("succeeded", 1)


async def run_until_done(expected: int) -> None:
    """Start an engine's loops, wait until ``expected`` jobs finished, stop it."""
    batch_engine = engine.Engine()
    batch_engine.start()
    try:
        for _ in range(400):
            if batch_engine.jobs_done >= expected:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{batch_engine.jobs_done} of {expected} jobs done")
    finally:
        await batch_engine.stop(5)


def test_the_fetch_loop_drains_the_queue_in_batches_of_batch_size_at_most(
    run_async: Any, scripted: ScriptedInference
) -> None:
    jobs = [submit() for _ in range(7)]
    with flow.with_modalkit(WORKER={"BATCH_SIZE": 3, "BATCHES_IN_FLIGHT": 2}):
        backend = get_inference_backend()  # built again for these settings
        assert isinstance(backend, ScriptedInference)
        run_async(run_until_done, len(jobs))
    assert sorted(len(messages) for _, messages in backend.calls) == [1, 3, 3]
    assert set(Job.objects.values_list("status", flat=True)) == {"succeeded"}


def test_a_job_nobody_woke_is_claimed_at_the_next_poll(run_async: Any, scripted: ScriptedInference) -> None:
    # No wake-up at all (the tests' waker records them): only the poll finds it.
    job = submit()
    with flow.with_modalkit(WORKER={"POLL_INTERVAL_SECONDS": 0.05}):
        run_async(run_until_done, 1)
    job.refresh_from_db()
    assert job.status == "succeeded"


def test_an_idle_worker_claims_a_scheduled_job_when_it_falls_due_not_at_its_next_poll(
    run_async: Any, scripted: ScriptedInference
) -> None:
    due = timezone.now() + dt.timedelta(seconds=0.5)
    job = submit(schedule=modalkit_django.Schedule(run_after=due))
    assert 0 < Job.objects.seconds_to_next_due() <= 0.5
    with flow.with_modalkit(WORKER={"POLL_INTERVAL_SECONDS": 3600}):  # no poll comes in time
        run_async(run_until_done, 1)
    job.refresh_from_db()
    assert job.status == "succeeded" and job.started_at >= due
    assert Job.objects.seconds_to_next_due() is None


def reclaim(job_id: Any) -> None:
    """What the sweep and another worker's claim do to a job whose lease ran out."""
    Job.objects.filter(id=job_id).update(lease_token=uuid.uuid4())


def test_a_batch_whose_lease_was_lost_stops_and_writes_nothing(
    run_async: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Reclaimed while it ran (its worker cut off from the database past its lease, say):
    the next renewal finds the lease gone and drops the work, so the run that holds the
    job now is the only one to write it."""
    job = submit()

    async def run() -> None:
        batch_engine = engine.Engine()
        [claimed] = await batch_engine.claim(1)
        running = asyncio.create_task(batch_engine.run_batch([claimed]))
        await asyncio.sleep(0.2)
        await database.run_db(reclaim, job.id)
        await asyncio.wait_for(running, 5)  # well before its inference would have ended

    with flow.with_modalkit(
        WORKER={"HEARTBEAT_SECONDS": 0.1, "LEASE_SECONDS": 1},
        INFERENCE={"BACKEND": "tests.doubles.ScriptedInference", "OPTIONS": {"delay": 30}},
    ):
        run_async(run)
    job.refresh_from_db()
    assert (job.status, job.result) == ("running", None)  # as the reclaiming run left it
    assert "The lease of 1 jobs was lost while they ran; their work is dropped" in caplog.text


def lease_expires_at(job_id: Any) -> Any:
    try:
        return Job.objects.values_list("lease_expires_at", flat=True).get(id=job_id)
    finally:
        connection.close()  # a thread of the test's own


@pytest.mark.django_db(transaction=True)
def test_a_renewal_never_waits_behind_the_workers_other_statements(run_async: Any) -> None:
    """The worker's hot-path thread busy for seconds (a slow finish, a lock wait): its
    leases are renewed on time anyway, on a connection of their own."""
    job = submit()

    async def run() -> tuple[Any, Any]:
        batch_engine = engine.Engine()
        [claimed] = await batch_engine.claim(1)
        running = asyncio.create_task(batch_engine.run_batch([claimed]))
        busy = asyncio.create_task(database.run_db(time.sleep, 3))  # the hot-path thread, held
        await asyncio.sleep(1.5)  # three heartbeats
        renewed = await sync_to_async(lease_expires_at, thread_sensitive=False)(job.id)
        assert not busy.done()
        running.cancel()
        await asyncio.gather(running, busy, return_exceptions=True)
        await database.LEASES.close()  # its connection, before the test database is dropped
        return claimed.lease_expires_at, renewed

    with flow.with_modalkit(
        WORKER={"HEARTBEAT_SECONDS": 0.5, "LEASE_SECONDS": 2},
        INFERENCE={"BACKEND": "tests.doubles.ScriptedInference", "OPTIONS": {"delay": 30}},
    ):
        claimed_until, renewed_until = run_async(run)
    assert renewed_until > claimed_until


def test_transient_inference_error_requeues_the_job(run_async: Any, scripted: ScriptedInference) -> None:
    scripted.script = lambda messages: [InferenceUnavailable("modal is down")] * len(messages)
    job = submit(failure_queue="errors")
    run_async(flow.process_batch, [str(job.id)])
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED
    assert job.run_after is not None
    assert not QueueDelivery.objects.exists()


def test_a_backend_bug_fails_the_jobs_visibly(run_async: Any, scripted: ScriptedInference) -> None:
    def crash(messages: list[dict[str, Any]]) -> list[Any]:
        raise KeyError("oops")

    scripted.script = crash
    job = submit(failure_queue="errors")
    run_async(flow.process_batch, [str(job.id)])
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == {"type": "KeyError", "message": "'oops'"}
    assert job.deliveries.get().route == "failure"


@pytest.fixture
def failing_queue() -> Iterator[type[FailingQueue]]:
    queues = {**settings.MODALKIT["QUEUES"], "flaky": {"BACKEND": "tests.doubles.FailingQueue"}}
    FailingQueue.healthy = False
    FailingQueue.sent = []
    with override_settings(MODALKIT={**settings.MODALKIT, "QUEUES": queues, "QUEUE_ROUTES": [("flaky_*", "flaky")]}):
        yield FailingQueue


def test_a_failed_send_is_kept_for_retry_and_sent_later(run_async: Any, failing_queue: type[FailingQueue]) -> None:
    job = submit(success_queue="flaky_results")
    run_async(flow.process_batch, [str(job.id)])
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED  # the result is safe whatever the queue does
    delivery = job.deliveries.get()
    assert (delivery.backend, delivery.status, delivery.attempts) == ("flaky", "retrying", 1)
    assert delivery.last_error == "DeliveryError: the queue is down"

    failing_queue.healthy = True
    run_async(flow.deliver, str(delivery.id))
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.external_id) == ("sent", 2, f"ext-{delivery.message_id}")
    assert [message.message_id for message in failing_queue.sent] == [delivery.message_id]
    # A late duplicate of the delivery task sends nothing more.
    run_async(flow.deliver, str(delivery.id))
    assert len(failing_queue.sent) == 1


def test_an_unknown_backend_alias_is_a_failed_send_not_a_lost_result(run_async: Any) -> None:
    job = submit(success_queue="q")
    with override_settings(MODALKIT={**settings.MODALKIT, "QUEUE_ROUTES": [("*", "gone")]}):
        run_async(flow.process_batch, [str(job.id)])
    delivery = QueueDelivery.objects.get(job=job)
    assert delivery.status == "retrying"
    assert "No queue backend 'gone'" in delivery.last_error


def test_a_backend_returning_too_few_predictions_fails_the_jobs(run_async: Any, scripted: ScriptedInference) -> None:
    scripted.script = lambda messages: [{"status": "success", "sentiment": "positive", "confidence": 1.0}]
    jobs = [submit() for _ in range(3)]
    run_async(flow.process_batch, [str(job.id) for job in jobs])
    errors = {Job.objects.get(id=job.id).error["message"] for job in jobs}
    assert errors == {"returned 1 predictions for 3 messages"}
    assert set(Job.objects.values_list("status", flat=True)) == {"failed"}


def test_a_wake_up_is_a_nudge_whatever_it_names(run_async: Any, scripted: ScriptedInference) -> None:
    """A malformed, unknown or duplicated id changes nothing: the worker takes what is runnable."""
    from modalkit_django.worker import tasks

    jobs = [submit() for _ in range(5)]

    async def nudged() -> None:
        batch_engine = engine.get_engine()
        with flow.with_modalkit(WORKER={"POLL_INTERVAL_SECONDS": 3600}):
            batch_engine.start()
            await asyncio.sleep(0.1)  # the loop's first look, then it waits for a nudge or an hour
            await tasks.run_job("not-a-uuid")
            await tasks.run_jobs([str(uuid.uuid4()), "neither-is-this"])
            for _ in range(200):
                if batch_engine.jobs_done >= len(jobs):
                    break
                await asyncio.sleep(0.02)
            await batch_engine.stop(5)

    run_async(nudged)
    assert set(Job.objects.values_list("status", flat=True)) == {"succeeded"}


def test_a_slow_queue_does_not_hold_up_the_batch(run_async: Any) -> None:
    modalkit = {
        **settings.MODALKIT,
        "QUEUES": {**settings.MODALKIT["QUEUES"], "slow": {"BACKEND": "tests.doubles.SlowQueue"}},
        "QUEUE_ROUTES": [("slow_*", "slow")],
        "DELIVERY": {"INLINE_TIMEOUT_SECONDS": 0.5},
    }
    job = submit(success_queue="slow_hook")

    async def batch_then_sends() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        batch_engine = engine.get_engine()
        await batch_engine.process_batch(1, only=[str(job.id)])
        batch_done = loop.time() - started
        await batch_engine.drain(30)
        return batch_done, loop.time() - started

    with override_settings(MODALKIT=modalkit):
        batch_done, sends_done = run_async(batch_then_sends)
    # The batch slot is free once the result is stored; the send gave up after its inline deadline.
    assert batch_done < 0.5 <= sends_done < 5
    job.refresh_from_db()
    assert job.status == "succeeded"
    delivery = job.deliveries.get()
    assert (delivery.status, delivery.attempts) == ("retrying", 1)
    assert delivery.last_error == "TimeoutError: no answer within 0.5 s; retried later"


def test_inference_past_its_deadline_fails_the_batch(run_async: Any) -> None:
    modalkit = {
        **settings.MODALKIT,
        "INFERENCE": {"BACKEND": "tests.doubles.ScriptedInference", "OPTIONS": {"delay": 5}},
        "WORKER": {**settings.MODALKIT["WORKER"], "INFERENCE_TIMEOUT_SECONDS": 0.2},
    }
    job = submit(failure_queue="errors")
    with override_settings(MODALKIT=modalkit):
        run_async(flow.process_batch, [str(job.id)])
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error == {"type": "InferenceTimeout", "message": "Inference did not finish within 0.2 s"}


def test_database_steps_wait_for_the_database_to_come_back(run_async: Any) -> None:
    from django.db import OperationalError

    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("the database system is shutting down")
        return "stored"

    assert run_async(database.run_db, flaky) == "stored"
    assert len(calls) == 3

    with flow.with_modalkit(WORKER={"DATABASE_RETRY_SECONDS": 0}), pytest.raises(OperationalError):
        run_async(database.run_db, lambda: (_ for _ in ()).throw(OperationalError("gone for good")))


def test_the_sweeper_goes_on_after_a_failed_sweep(run_async: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    calls: list[str] = []

    async def failing_sweep(*, worker: str, thread: Any) -> None:
        calls.append(worker)
        if len(calls) == 2:
            raise asyncio.CancelledError  # stop the loop after its second pass
        raise RuntimeError("the database is away")

    monkeypatch.setattr(sweeper, "sweep_once", failing_sweep)
    with flow.with_modalkit(WORKER={"SWEEP_INTERVAL_SECONDS": 0.01}), pytest.raises(asyncio.CancelledError):
        run_async(sweeper.run_sweeper)
    assert len(calls) == 2
    assert "Sweep failed; trying again in 0.01s" in caplog.text


def test_a_read_of_wake_ups_reaches_taskiq_as_one_task(run_async: Any, redis_client: Any) -> None:
    """Wake-ups from workers of an earlier version (one run_job per job) cost one pass of
    TaskIQ's receiver per read, not one per job, and are acknowledged and deleted."""
    from taskiq import TaskiqMessage
    from taskiq.receiver import Receiver

    from modalkit_django import broker
    from modalkit_django.conf import BrokerSettings
    from modalkit_django.worker import tasks

    queue = f"modalkit-test-merge-{uuid.uuid4().hex[:8]}"
    stream = broker.build_broker(BrokerSettings(url=settings.REDIS_URL, queue_name=queue))

    async def scenario() -> str:
        await stream.startup()
        name = tasks.run_job.task_name
        wake_ups = [
            TaskiqMessage(task_id=str(n), task_name=name, labels={}, args=[str(uuid.uuid4())], kwargs={})
            for n in range(3)
        ]
        await stream.kick_many([stream.formatter.dumps(message) for message in wake_ups])
        reading = stream.listen()
        read = await anext(reading)
        await Receiver(stream, run_startup=False).callback(read)
        await reading.aclose()
        await stream.shutdown()
        return stream.formatter.loads(read.data).task_name

    try:
        assert run_async(scenario) == tasks.run_jobs.task_name  # one message for the three
        assert redis_client.xlen(queue) == 0
    finally:
        redis_client.delete(queue)
