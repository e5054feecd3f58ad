"""Group commit: submits that arrive together are inserted together and woken together."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
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
def run_async() -> Callable[..., Any]:
    """Async code as a view runs it: on an event loop with no synchronous caller (no
    async_to_sync around it, which would make asubmit_job join the caller's transaction)."""

    def run(function: Callable[..., Any], *args: Any) -> Any:
        return asyncio.run(function(*args))

    return run


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
            threading.Event().wait(0.5)
        real_insert(jobs)

    monkeypatch.setattr(intake, "_insert", insert)
    return sizes


def test_submits_that_arrive_together_share_one_insert_and_one_wake_up(
    run_async: Any, batches: list[int], recording_waker: Any
) -> None:
    async def fifty_clients() -> list[Job]:
        first = asyncio.create_task(modalkit_django.asubmit_job(message={"text": "first"}))
        while not batches:  # the first insert is under way (and slow): the rest pile up behind it
            await asyncio.sleep(0.005)
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


def test_one_row_the_database_refuses_fails_alone(run_async: Any, batches: list[int], recording_waker: Any) -> None:
    """Host code calling asubmit_job is not validated as an API request is: a NUL character
    (PostgreSQL's jsonb refuses it) or a value JSON cannot hold fails its own submit only."""

    async def together() -> list[Any]:
        first = asyncio.create_task(modalkit_django.asubmit_job(message={"text": "first"}))
        await asyncio.sleep(0.05)  # the rest pile up behind the first insert: one statement
        rest = [
            modalkit_django.asubmit_job(message={"text": "fine"}),
            modalkit_django.asubmit_job(message={"text": "bad\x00"}),
            modalkit_django.asubmit_job(message={"when": object()}),
            modalkit_django.asubmit_job(message={"text": "also fine"}),
        ]
        return [await first, *await asyncio.gather(*rest, return_exceptions=True)]

    outcomes = run_async(together)
    assert [isinstance(outcome, Job) for outcome in outcomes] == [True, True, False, False, True]
    assert isinstance(outcomes[3], TypeError)
    assert sorted(Job.objects.values_list("message__text", flat=True)) == ["also fine", "fine", "first"]
    assert sorted(len(woken) for woken in recording_waker.jobs) == [1, 2]  # the first, then the two stored


def test_a_flush_is_capped_by_bytes_as_well_as_rows(
    run_async: Any, batches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake, "MAX_BATCH_BYTES", 2_500)

    async def piled_up() -> None:
        first = asyncio.create_task(modalkit_django.asubmit_job(message={"text": "first"}))
        await asyncio.sleep(0.05)
        await asyncio.gather(*(modalkit_django.asubmit_job(message={"text": "x" * 1000}) for _ in range(5)))
        await first

    run_async(piled_up)
    assert batches == [1, 2, 2, 1]  # ~1 kB each: two a statement


def test_asubmit_job_from_synchronous_code_joins_its_transaction_as_submit_job_does(recording_waker: Any) -> None:
    """Through async_to_sync, inside transaction.atomic(): the job is there only if the
    transaction commits, and workers hear of it once it does, never before."""
    from asgiref.sync import async_to_sync
    from django.db import transaction

    def submit_then_roll_back() -> int:
        with transaction.atomic():
            async_to_sync(modalkit_django.asubmit_job)(message={"text": "good"})
            seen = Job.objects.count()  # in the caller's transaction
            transaction.set_rollback(True)
        return seen

    assert submit_then_roll_back() == 1
    assert not Job.objects.exists()
    assert recording_waker.jobs == []
    with transaction.atomic():
        job = async_to_sync(modalkit_django.asubmit_job)(message={"text": "good"})
        assert recording_waker.jobs == []  # not before the commit
    assert recording_waker.jobs == [[job.id]]
    assert recording_waker.committed == [True]
