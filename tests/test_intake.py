"""Group commit: submits that arrive together are inserted together and woken together."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from django.db import OperationalError

import modalkit_django
from modalkit_django.api import intake
from modalkit_django.models import Job

# The recording waker throughout: the test process's embedded worker would otherwise run
# these committed jobs while the teardown truncates the tables (a deadlock CI met once).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("recording_waker")]


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each INSERT; the first one is slow, as under load."""
    sizes: list[int] = []
    real_insert = intake._insert
    first = threading.Event()

    def insert(jobs: Sequence[Job]) -> None:
        sizes.append(len(jobs))
        if not first.is_set():
            first.set()
            threading.Event().wait(0.2)
        real_insert(jobs)

    monkeypatch.setattr(intake, "_insert", insert)
    return sizes


def test_submits_that_arrive_together_share_one_insert_and_one_wake_up(
    run_async: Any, batches: list[int], recording_waker: Any
) -> None:
    async def fifty_clients() -> list[Job]:
        first = asyncio.create_task(modalkit_django.asubmit_job(message={"text": "first"}))
        await asyncio.sleep(0.05)  # the first insert is under way: the rest pile up behind it
        rest = [modalkit_django.asubmit_job(message={"text": f"good {n}"}) for n in range(49)]
        return [await first, *await asyncio.gather(*rest)]

    jobs = run_async(fifty_clients)
    assert batches == [1, 49]
    assert [len(woken) for woken in recording_waker.jobs] == [1, 49]
    assert recording_waker.committed == [True, True]
    assert Job.objects.filter(id__in=[job.id for job in jobs], status="queued").count() == 50


def test_one_client_is_inserted_at_once(run_async: Any, batches: list[int]) -> None:
    async def one_after_another() -> None:
        for n in range(3):
            await modalkit_django.asubmit_job(message={"text": f"good {n}"})

    run_async(one_after_another)
    assert batches == [1, 1, 1]


def test_a_failed_insert_fails_each_of_its_submits(run_async: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(jobs: Sequence[Job]) -> None:
        raise OperationalError("the database system is shutting down")

    monkeypatch.setattr(intake, "_insert", unavailable)

    async def two() -> list[Any]:
        return await asyncio.gather(
            *(modalkit_django.asubmit_job(message={"text": "good"}) for _ in range(2)), return_exceptions=True
        )

    assert [type(outcome) for outcome in run_async(two)] == [OperationalError, OperationalError]
    assert not Job.objects.exists()


def test_an_idempotent_submit_takes_the_one_by_one_path(run_async: Any, batches: list[int], user: Any) -> None:
    async def twice() -> tuple[Job, Job]:
        first = await modalkit_django.asubmit_job(message={"text": "good"}, owner=user, idempotency_key="k1")
        return first, await modalkit_django.asubmit_job(message={"text": "good"}, owner=user, idempotency_key="k1")

    first, again = run_async(twice)
    assert (again.id, again.replayed) == (first.id, True)
    assert batches == []
