"""Worker heartbeats: real worker processes keep their rows; the model tells live from dead."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

import modalkit_django
from modalkit_django.conf import get_settings
from modalkit_django.models import Job, WorkerHeartbeat
from modalkit_django.worker import heartbeats
from modalkit_django.worker.engine import Engine

from .conftest import wait_until

TIMERS = {"HEARTBEAT_SECONDS": 0.5, "LEASE_SECONDS": 5, "SWEEP_INTERVAL_SECONDS": 3600}
STALE_AFTER = 3 * TIMERS["HEARTBEAT_SECONDS"]


def parent_of(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ")".
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def worker_row(manager_pid: int) -> WorkerHeartbeat | None:
    """The row of the worker process TaskIQ's manager (``manager_pid``) forked."""
    for row in WorkerHeartbeat.objects.filter(stopped_at__isnull=True):
        if os.path.exists(f"/proc/{row.pid}") and parent_of(row.pid) == manager_pid:
            return row
    return None


# --- The model's liveness helpers ----------------------------------------------------


@pytest.mark.django_db
def test_live_dead_and_stopped_workers_are_told_apart_by_the_databases_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    now = timezone.now()
    WorkerHeartbeat.objects.create(name="live", hostname="h", pid=1, last_beat_at=now)
    WorkerHeartbeat.objects.create(name="dead", hostname="h", pid=2, last_beat_at=now - dt.timedelta(minutes=5))
    WorkerHeartbeat.objects.create(name="stopped", hostname="h", pid=3, last_beat_at=now, stopped_at=now)
    gone = WorkerHeartbeat.objects.create(name="gone", hostname="h", pid=4, last_beat_at=now - dt.timedelta(days=2))
    # A reader whose host clock runs 30 s ahead judges as every other: by the database's.
    monkeypatch.setattr(timezone, "now", lambda: now + dt.timedelta(seconds=30))

    assert [row.name for row in WorkerHeartbeat.objects.live()] == ["live"]
    assert {row.name for row in WorkerHeartbeat.objects.dead()} == {"dead", "gone"}
    states = {row.name: row.state() for row in WorkerHeartbeat.objects.with_liveness()}
    assert states == {"live": "live", "dead": "dead", "stopped": "stopped", "gone": "dead"}
    # A deployment with slower beats says so: five minutes is then recent enough.
    assert {row.name for row in WorkerHeartbeat.objects.live(stale_after=600)} == {"live", "dead"}

    assert WorkerHeartbeat.objects.prune(older_than=heartbeats.PRUNE_AFTER_SECONDS) == 1
    assert not WorkerHeartbeat.objects.filter(pk=gone.pk).exists()


def test_stale_after_follows_the_heartbeat_setting() -> None:
    with override_settings(MODALKIT={**settings.MODALKIT, "WORKER": {"HEARTBEAT_SECONDS": 4, "LEASE_SECONDS": 30}}):
        assert get_settings().worker.stale_after_seconds == 12


@pytest.mark.django_db
def test_a_beat_writes_the_engines_counts(run_async: Any) -> None:
    engine = Engine()
    beat = heartbeats.Heartbeat(engine)
    engine.jobs_done, engine.deliveries_sent, engine.in_flight = 7, 5, 2
    run_async(beat.beat)
    row = WorkerHeartbeat.objects.get(name=beat.name)
    assert (row.hostname, row.pid, row.version) == (socket.gethostname(), os.getpid(), modalkit_django.__version__)
    assert (row.jobs_done, row.deliveries_sent, row.in_flight, row.stopped_at) == (7, 5, 2, None)
    first_beat = row.last_beat_at

    engine.jobs_done, engine.in_flight = 9, 0
    run_async(beat.stop)
    row.refresh_from_db()
    assert (row.jobs_done, row.in_flight) == (9, 0)
    assert row.stopped_at is not None and row.last_beat_at >= first_beat
    assert WorkerHeartbeat.objects.with_liveness().get(pk=row.pk).state() == "stopped"


# --- Real worker processes -------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_worker_beats_counts_its_jobs_and_records_its_clean_stop(start_worker: Any) -> None:
    worker = start_worker(TIMERS)
    row = wait_until(lambda: worker_row(worker.process.pid), timeout=60, what="the worker's heartbeat row")
    assert row.hostname == socket.gethostname()
    assert row.name.startswith(f"{row.hostname}:{row.pid}:")
    assert WorkerHeartbeat.objects.live(stale_after=STALE_AFTER).filter(pk=row.pk).exists()

    jobs = [
        modalkit_django.submit_job(message={"text": f"a great film {n}"}, success_queue="results") for n in range(3)
    ]
    wait_until(lambda: Job.objects.filter(status=Job.Status.SUCCEEDED).count() == 3, timeout=60, what="the jobs")

    def counted() -> WorkerHeartbeat | None:
        row.refresh_from_db()
        return row if (row.jobs_done, row.deliveries_sent) == (len(jobs), len(jobs)) else None

    wait_until(counted, what="the beat after the jobs")
    assert row.in_flight == 0
    beat = row.last_beat_at
    wait_until(lambda: WorkerHeartbeat.objects.get(pk=row.pk).last_beat_at > beat, what="another beat")

    worker.stop()  # SIGTERM: a clean shutdown
    row.refresh_from_db()
    assert row.stopped_at is not None
    assert WorkerHeartbeat.objects.with_liveness(stale_after=STALE_AFTER).get(pk=row.pk).state() == "stopped"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_stops_beating_and_is_dead(start_worker: Any) -> None:
    worker = start_worker(TIMERS)
    row = wait_until(lambda: worker_row(worker.process.pid), timeout=60, what="the worker's heartbeat row")
    worker.kill(signal.SIGKILL)

    row.refresh_from_db()
    last_beat = row.last_beat_at
    live = WorkerHeartbeat.objects.live(stale_after=STALE_AFTER).filter(pk=row.pk)
    wait_until(lambda: not live.exists(), timeout=10, what="the beat to go stale")
    row.refresh_from_db()
    assert row.last_beat_at == last_beat  # nobody beat for it
    assert row.stopped_at is None
    assert WorkerHeartbeat.objects.with_liveness(stale_after=STALE_AFTER).get(pk=row.pk).state() == "dead"
    assert WorkerHeartbeat.objects.dead(stale_after=STALE_AFTER).filter(pk=row.pk).exists()


@pytest.mark.django_db
def test_a_failed_beat_is_logged_and_the_beats_go_on(run_async: Any, caplog: pytest.LogCaptureFixture) -> None:
    beat = heartbeats.Heartbeat(Engine())
    beat.pid = -1  # refused by the database: every write fails, as in an outage

    async def beat_for_a_while() -> bool:
        beat.start()
        await asyncio.sleep(0.3)
        running = beat._task is not None and not beat._task.done()
        await beat.stop()
        return running

    timers = {**TIMERS, "DATABASE_RETRY_SECONDS": 0, "HEARTBEAT_SECONDS": 0.05}
    with override_settings(MODALKIT={**settings.MODALKIT, "WORKER": timers}):
        assert run_async(beat_for_a_while)
    failures = [record for record in caplog.records if "could not record its heartbeat" in record.getMessage()]
    assert len(failures) >= 2
    assert "Could not record the stop of worker" in caplog.text
    assert not WorkerHeartbeat.objects.filter(name=beat.name).exists()
