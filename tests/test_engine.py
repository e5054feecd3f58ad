"""The worker's batch path, run in this process against Postgres."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

import modalkit_django
from modalkit_django.clients import get_inference_backend
from modalkit_django.exceptions import InferenceUnavailable
from modalkit_django.models import Job, QueueDelivery, SweepState
from modalkit_django.queues.memory import MemoryBackend
from modalkit_django.worker import engine, sweeper
from modalkit_django.worker.batcher import JobBatcher

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


def test_concurrent_messages_share_one_claim_and_one_model_call(run_async: Any, scripted: ScriptedInference) -> None:
    jobs = [submit(f"text {n}") for n in range(20)]

    async def deliver_all() -> None:
        await asyncio.gather(*(engine.get_engine().run_jobs([str(job.id)]) for job in jobs))

    run_async(deliver_all)
    assert len(scripted.calls) == 1
    assert len(scripted.inputs) == 20
    assert set(Job.objects.values_list("status", flat=True)) == {"succeeded"}


def test_duplicate_messages_run_the_inference_once(run_async: Any, scripted: ScriptedInference) -> None:
    job = submit()

    async def duplicates() -> None:
        # Two copies in the same batch, then a late third.
        await asyncio.gather(engine.get_engine().run_jobs([str(job.id)]), engine.get_engine().run_jobs([str(job.id)]))
        await engine.get_engine().run_jobs([str(job.id), str(job.id)])

    run_async(duplicates)
    assert scripted.inputs == [{"text": "good"}]
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("succeeded", 1)


def test_batches_never_exceed_the_batch_size(run_async: Any, scripted: ScriptedInference) -> None:
    jobs = [submit() for _ in range(7)]

    async def run() -> None:
        batcher = JobBatcher(engine.get_engine().process_batch, batch_size=3)
        await asyncio.gather(*(batcher.run([str(job.id)]) for job in jobs))

    run_async(run)
    assert sorted(len(messages) for _, messages in scripted.calls) == [1, 3, 3]


def test_a_message_of_many_jobs_returns_once_all_its_batches_are_stored(
    run_async: Any, scripted: ScriptedInference
) -> None:
    jobs = [submit(f"text {n}") for n in range(7)]

    async def run() -> set[str]:
        batcher = JobBatcher(engine.get_engine().process_batch, batch_size=3)
        await batcher.run([str(job.id) for job in jobs])
        return set(await engine.run_db(lambda: list(Job.objects.values_list("status", flat=True))))

    assert run_async(run) == {"succeeded"}  # acknowledged only then
    assert sorted(len(messages) for _, messages in scripted.calls) == [1, 3, 3]


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


def test_sweep_once_sends_the_wake_ups_it_found(run_async: Any, scripted: ScriptedInference) -> None:
    import datetime as dt

    from django.utils import timezone

    from modalkit_django.broker import get_broker

    job = submit()
    Job.objects.filter(id=job.id).update(enqueued_at=timezone.now() - dt.timedelta(hours=1))

    async def sweep_and_drain() -> sweeper.SweepResult | None:
        result = await sweeper.sweep_once()
        await get_broker().wait_all()  # type: ignore[attr-defined]
        return result

    SweepState.objects.all().delete()
    result = run_async(sweep_and_drain)
    assert result.jobs_to_wake == [job.id]
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED


def test_a_backend_returning_too_few_predictions_fails_the_jobs(run_async: Any, scripted: ScriptedInference) -> None:
    scripted.script = lambda messages: [{"status": "success", "sentiment": "positive", "confidence": 1.0}]
    jobs = [submit() for _ in range(3)]
    run_async(flow.process_batch, [str(job.id) for job in jobs])
    errors = {Job.objects.get(id=job.id).error["message"] for job in jobs}
    assert errors == {"returned 1 predictions for 3 messages"}
    assert set(Job.objects.values_list("status", flat=True)) == {"failed"}


def test_a_malformed_job_id_fails_alone(run_async: Any, scripted: ScriptedInference, caplog: Any) -> None:
    from modalkit_django.worker import tasks

    jobs = [submit() for _ in range(5)]

    async def one_batch() -> None:
        ids = [str(job.id) for job in jobs]
        await asyncio.gather(
            tasks.run_job("not-a-uuid"),
            *(tasks.run_job(job_id) for job_id in ids[:3]),
            tasks.run_jobs([ids[3], "neither-is-this", ids[4]]),  # run_job messages a worker read together
        )

    run_async(one_batch)
    assert set(Job.objects.values_list("status", flat=True)) == {"succeeded"}
    assert "Ignoring a run_job message for 'not-a-uuid'" in caplog.text
    assert "Ignoring a run_job message for 'neither-is-this'" in caplog.text


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
        await batch_engine.process_batch([str(job.id)])
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

    assert run_async(engine.run_db, flaky) == "stored"
    assert len(calls) == 3

    with flow.with_modalkit(WORKER={"DATABASE_RETRY_SECONDS": 0}), pytest.raises(OperationalError):
        run_async(engine.run_db, lambda: (_ for _ in ()).throw(OperationalError("gone for good")))


def test_a_batch_that_fails_as_a_whole_fails_each_of_its_callers(run_async: Any) -> None:
    async def broken(job_ids: Any) -> None:
        raise RuntimeError("the database is gone for good")

    async def run() -> list[Any]:
        batcher = JobBatcher(broken, batch_size=10)
        return await asyncio.gather(batcher.run(["a"]), batcher.run(["b", "c"]), return_exceptions=True)

    outcomes = run_async(run)
    assert [str(outcome) for outcome in outcomes] == ["the database is gone for good"] * 2


def test_the_sweeper_goes_on_after_a_failed_sweep(run_async: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    calls: list[str] = []

    async def failing_sweep(*, worker: str) -> None:
        calls.append(worker)
        if len(calls) == 2:
            raise asyncio.CancelledError  # stop the loop after its second pass
        raise RuntimeError("the database is away")

    monkeypatch.setattr(sweeper, "sweep_once", failing_sweep)
    with flow.with_modalkit(WORKER={"SWEEP_INTERVAL_SECONDS": 0.01}), pytest.raises(asyncio.CancelledError):
        run_async(sweeper.run_sweeper)
    assert len(calls) == 2
    assert "Sweep failed; trying again in 0.01s" in caplog.text


def test_a_read_of_wake_ups_runs_as_one_task_acknowledged_once_its_jobs_are_stored(
    run_async: Any, scripted: ScriptedInference, redis_client: Any
) -> None:
    from taskiq import AckableMessage, TaskiqMessage
    from taskiq.receiver import Receiver

    from modalkit_django import broker
    from modalkit_django.conf import BrokerSettings
    from modalkit_django.worker import tasks

    jobs = [submit(f"text {n}") for n in range(3)]
    queue = f"modalkit-test-merge-{uuid.uuid4().hex[:8]}"
    stream = broker.build_broker(BrokerSettings(url=settings.REDIS_URL, queue_name=queue))
    statuses_at_ack: list[list[str]] = []

    async def scenario() -> str:
        await stream.startup()
        wake_ups = [TaskiqMessage(task_id=str(n), task_name=tasks.run_job.task_name, labels={}, args=[str(job.id)],
                                  kwargs={}) for n, job in enumerate(jobs)]  # fmt: skip
        await stream.kick_many([stream.formatter.dumps(message) for message in wake_ups])
        reading = stream.listen()
        read = await anext(reading)

        async def ack() -> None:
            statuses_at_ack.append(await engine.run_db(lambda: list(Job.objects.values_list("status", flat=True))))
            await read.ack()

        await Receiver(stream, run_startup=False).callback(AckableMessage(data=read.data, ack=ack))
        await reading.aclose()
        await stream.shutdown()
        return stream.formatter.loads(read.data).task_name

    try:
        assert run_async(scenario) == tasks.run_jobs.task_name  # one message for the three
        assert [len(messages) for _, messages in scripted.calls] == [3]
        assert statuses_at_ack == [["succeeded"] * 3]  # acknowledged only once stored
        assert redis_client.xlen(queue) == 0
    finally:
        redis_client.delete(queue)
