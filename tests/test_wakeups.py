"""Waking workers: never blocking or failing a submit, and what happens when it cannot."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

import modalkit_django
from modalkit_django.jobs import wakeups
from modalkit_django.models import Job, QueueDelivery, SweepState
from modalkit_django.worker import sweeper
from modalkit_django.worker.tasks import BrokerWaker

from . import flow
from .conftest import wait_until


@pytest.fixture
def no_waker() -> Iterator[None]:
    previous = wakeups.set_waker(wakeups.NullWaker())
    yield
    wakeups.set_waker(previous)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("no_waker")
def test_without_a_waker_jobs_are_kept_and_the_sweep_finds_them(run_async: Any) -> None:
    job = modalkit_django.submit_job(message={"text": "good"})
    assert Job.objects.get(id=job.id).status == "queued"
    Job.objects.mark_unwoken([job.id])
    result = run_async(sweeper.sweep_once)
    assert result.jobs_to_wake == [job.id]  # it would be woken, had the app installed a waker


@pytest.mark.django_db(transaction=True)
def test_a_wake_up_the_broker_refuses_marks_the_work_for_the_sweep(caplog: pytest.LogCaptureFixture) -> None:
    delivery = flow.pending_delivery()
    unreachable = {**settings.MODALKIT, "BROKER": {"URL": "redis://127.0.0.1:1/0", "QUEUE_NAME": "nowhere"}}
    waker = wakeups.get_waker()  # the app's: submits below use it too
    assert isinstance(waker, BrokerWaker)
    with override_settings(MODALKIT=unreachable):
        jobs = [modalkit_django.submit_job(message={"text": "good"}) for _ in range(2)]
        waker.wake_jobs([job.id for job in jobs])
        waker.wake_deliveries([delivery.id])
        unwoken = Job.objects.filter(id__in=[job.id for job in jobs], enqueued_at__isnull=True)
        wait_until(lambda: unwoken.count() == 2, what="the jobs to be marked unwoken")
        # "Now" read at each poll: marked due after a query made earlier, it would never match.
        due = QueueDelivery.objects.filter(id=delivery.id)
        wait_until(lambda: due.filter(next_attempt_at__lte=timezone.now()).exists(), what="the delivery to be due")
    failures = [record for record in caplog.records if record.getMessage().startswith("Could not wake workers")]
    assert len(failures) == 1
    SweepState.objects.all().delete()


def test_waking_nothing_sends_nothing() -> None:
    waker = BrokerWaker()
    waker.wake_jobs([])  # no broker is started for an empty list
    waker.wake_deliveries([])
