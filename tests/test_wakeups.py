"""Waking workers: never blocking or failing a submit, and what happens when it cannot."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

import modalkit_django
from modalkit_django import broker
from modalkit_django.jobs import wakeups
from modalkit_django.models import Job
from modalkit_django.worker import engine
from modalkit_django.worker.tasks import BrokerWaker

from .conftest import wait_until


@pytest.fixture
def no_waker() -> Iterator[None]:
    previous = wakeups.set_waker(wakeups.NullWaker())
    yield
    wakeups.set_waker(previous)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("no_waker")
def test_without_a_waker_jobs_are_kept_and_a_worker_finds_them(run_async: Any) -> None:
    job = modalkit_django.submit_job(message={"text": "good"})
    assert Job.objects.get(id=job.id).status == "queued"

    async def poll_once() -> list[Job]:
        return await engine.get_engine().process_batch(10)  # what an idle worker's poll does

    assert [claimed.id for claimed in run_async(poll_once)] == [job.id]
    assert Job.objects.get(id=job.id).status == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_a_wake_up_the_broker_refuses_is_logged_once_and_costs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    unreachable = {**settings.MODALKIT, "BROKER": {"URL": "redis://127.0.0.1:1/0", "QUEUE_NAME": "nowhere"}}
    waker = wakeups.get_waker()  # the app's: submits below use it too
    assert isinstance(waker, BrokerWaker)
    with override_settings(MODALKIT=unreachable):
        jobs = [modalkit_django.submit_job(message={"text": "good"}) for _ in range(2)]
        waker.wake_jobs([job.id for job in jobs])
        waker.wake_deliveries([uuid.uuid4()])

        def failures() -> list[Any]:
            return [record for record in caplog.records if record.getMessage().startswith("Could not wake workers")]

        wait_until(lambda: len(failures()) == 1, what="the failure to be logged")
        # The jobs are as they were: queued, due, for any worker's next poll.
        assert set(Job.objects.filter(id__in=[job.id for job in jobs]).runnable().values_list("status", flat=True)) == {
            "queued"
        }
        waker.wake_jobs([job.id for job in jobs])
        time.sleep(0.5)
    assert len(failures()) == 1  # one outage, one line


def test_waking_nothing_sends_nothing() -> None:
    waker = BrokerWaker()
    waker.wake_jobs([])  # no broker is started for an empty list
    waker.wake_deliveries([])


def test_with_the_embedded_broker_only_the_web_process_wakes_its_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``manage.py`` command or a script using the embedded default sends no wake-up: it
    would start a worker of its own, cut off mid-batch when the command exits. The web
    process's embedded worker finds the work at its next poll."""
    sent: list[Any] = []
    monkeypatch.setattr(broker, "submit", lambda coroutine: sent.append(coroutine.close()))
    assert settings.MODALKIT["BROKER"]["URL"] is None
    waker = BrokerWaker()
    waker.wake_jobs([uuid.uuid4()])
    waker.wake_deliveries([uuid.uuid4()])
    assert sent == []
    monkeypatch.setattr(broker, "_started_here", True)  # as broker.start() in wsgi.py/asgi.py
    waker.wake_jobs([uuid.uuid4()])
    waker.wake_deliveries([uuid.uuid4()])
    assert len(sent) == 2
