"""Nothing is lost: a dead worker and a lost broker message, caused for real."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

import modalkit_django
from modalkit_django.jobs import wakeups
from modalkit_django.models import Job

from .conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def status_of(job_id: Any) -> str:
    return Job.objects.get(id=job_id).status


def test_a_job_survives_its_worker_being_killed(start_worker: Any, tmp_path: Path) -> None:
    env = {"MODALKIT_TEST_PIPELINE": "tests.pipelines.HangOncePipeline"}
    timers = {"LEASE_SECONDS": 2, "HEARTBEAT_SECONDS": 0.5, "SWEEP_INTERVAL_SECONDS": 0.5}
    first = start_worker(timers, **env)
    marker = tmp_path / "hung"
    job = modalkit_django.submit_job(message={"text": f"hang {marker} good"}, success_queue="results")
    wait_until(marker.exists, what="the first worker to start the job")
    assert status_of(job.id) == "running"

    first.kill()  # SIGKILL: no cleanup, no acknowledgement
    start_worker(timers, **env)

    wait_until(lambda: status_of(job.id) == "succeeded", timeout=30, what="the second worker to finish the job")
    job.refresh_from_db()
    assert job.attempts == 2
    assert job.result["sentiment"] == "positive"
    wait_until(lambda: job.deliveries.filter(status="sent").exists(), what="the result to be delivered")


def test_a_job_whose_wake_up_could_not_be_sent_runs_at_a_workers_next_poll(
    start_worker: Any, redis_broker: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on port 1: sending the wake-ups fails after the jobs are committed.
    unreachable = {**settings.MODALKIT, "BROKER": {"URL": "redis://127.0.0.1:1/0", "QUEUE_NAME": redis_broker["queue"]}}
    with override_settings(MODALKIT=unreachable):
        jobs = [modalkit_django.submit_job(message={"text": "good"}, success_queue="results") for _ in range(3)]

        def failures() -> list[Any]:
            return [record for record in caplog.records if record.getMessage().startswith("Could not wake workers")]

        waker = wakeups.get_waker()
        # Every wake-up has failed (not only the first, which is logged) before the broker goes.
        wait_until(lambda: getattr(waker, "_failures", 0) == 3, what="the failed wake-ups to be noticed")
    assert {status_of(job.id) for job in jobs} == {"queued"}
    assert len(failures()) == 1  # once per outage, not once per job

    start_worker()  # the shipped timers: an idle worker looks every POLL_INTERVAL_SECONDS (0.5 s)
    wait_until(lambda: {status_of(job.id) for job in jobs} == {"succeeded"}, timeout=30, what="the poll")
    assert {Job.objects.get(id=job.id).attempts for job in jobs} == {1}


def test_a_stream_message_for_a_finished_job_is_harmless(start_worker: Any) -> None:
    from modalkit_django import broker
    from modalkit_django.worker import tasks

    start_worker()
    job = modalkit_django.submit_job(message={"text": "good"})
    wait_until(lambda: status_of(job.id) == "succeeded", what="the job")
    broker.kick(tasks.run_job, str(job.id))
    broker.kick(tasks.run_job, str(uuid.uuid4()))  # a job that does not exist
    done = modalkit_django.submit_job(message={"text": "bad"})
    wait_until(lambda: status_of(done.id) == "succeeded", what="a later job")
    assert Job.objects.get(id=job.id).attempts == 1


FAST_TIMERS = {"LEASE_SECONDS": 2, "HEARTBEAT_SECONDS": 0.5, "SWEEP_INTERVAL_SECONDS": 0.5}


def test_a_slow_job_that_is_alive_is_never_reclaimed(start_worker: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.log"
    start_worker(FAST_TIMERS, MODALKIT_TEST_PIPELINE="tests.pipelines.SleepPipeline")
    # Three times its lease: only the heartbeat keeps it from being run twice.
    job = modalkit_django.submit_job(message={"text": f"sleep 6 {runs} good"})
    wait_until(lambda: status_of(job.id) == "succeeded", timeout=30, what="the slow job")
    assert Job.objects.get(id=job.id).attempts == 1
    assert runs.read_text().splitlines() == ["ran"]


def test_two_workers_sweep_once_per_period_between_them(start_worker: Any) -> None:
    from modalkit_django.models import SweepState

    start_worker(FAST_TIMERS)
    start_worker(FAST_TIMERS)
    wait_until(SweepState.objects.exists, what="a first sweep")
    first = SweepState.objects.get()
    window = 5.0
    time.sleep(window)
    last = SweepState.objects.get()
    sweeps = last.sweeps - first.sweeps
    # One sweep may be taken every 0.8 x 0.5 s: two workers sweeping on their own
    # (each every 0.4 to 0.6 s) would make about twice as many.
    assert 2 <= sweeps <= window / 0.4 + 1
