"""The Prometheus endpoint: what the job path records, the database's gauges, access, multi-process mode."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modal.exception as modal_errors
import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.test import Client, override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

import modalkit_django
from modalkit_django import metrics
from modalkit_django.clients.modal import ModalBackend
from modalkit_django.metrics.checks import check_metrics
from modalkit_django.models import Job, SweepState
from modalkit_django.queues.memory import MemoryBackend
from modalkit_django.worker import sweeper

from . import flow
from .conftest import ROOT, wait_until

TOKEN = "t" * 32


def metrics_settings(**values: Any) -> Any:
    return override_settings(MODALKIT={**settings.MODALKIT, "METRICS": values})


@pytest.fixture
def enabled() -> Iterator[None]:
    with metrics_settings(ENABLED=True):
        yield


def scrape(client: Client | None = None, **headers: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics through the project's URLconf; every sample by (name, labels)."""
    response = (client or Client()).get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# --- Access --------------------------------------------------------------------------


def test_the_endpoint_is_a_404_unless_enabled(client: Client) -> None:
    assert client.get("/metrics").status_code == 404
    with metrics_settings(ENABLED=False, TOKEN=TOKEN):
        assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


@pytest.mark.django_db
def test_a_token_is_required_when_set(client: Client) -> None:
    with metrics_settings(ENABLED=True, TOKEN=TOKEN):
        missing = client.get("/metrics")
        assert missing.status_code == 401
        assert missing["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN[:-1]}x"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert value(scrape(client, Authorization=f"Bearer {TOKEN}"), "modalkit_metrics_database_up") == 1


def test_a_short_token_is_refused_by_the_settings_check() -> None:
    from modalkit_django.checks import check_modalkit

    with metrics_settings(ENABLED=True, TOKEN="short"):
        [error] = check_modalkit()
    assert error.id == "modalkit_django.E001"
    assert "METRICS.TOKEN: String should have at least 16 characters" in error.msg


def test_the_check_asks_for_prometheus_client_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    # A module set to None in sys.modules cannot be imported: as if it were not installed.
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    assert check_metrics() == []  # disabled: not needed
    with metrics_settings(ENABLED=True):
        [error] = [
            found for found in run_checks(tags=["modalkit"]) if "METRICS" in found.msg
        ]  # registered with the app's checks
    assert error.id == "modalkit_django.E011"
    assert "modalkit-django[metrics]" in (error.hint or "")


# --- What is recorded, in this process -------------------------------------------------


@pytest.mark.django_db
def test_a_scrape_shows_jobs_run_deliveries_and_the_queue(
    enabled: None,
    recording_waker: Any,
    memory_queue: MemoryBackend,
    run_async: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    before = scrape()
    with django_capture_on_commit_callbacks(execute=True):
        good = modalkit_django.submit_job(message={"text": "a great film"}, success_queue="results")
        bad = modalkit_django.submit_job(message={"text": "explode"}, failure_queue="errors")
        waiting = [modalkit_django.submit_job(message={"text": f"later {n}"}) for n in range(3)]
    model = good.model_name
    Job.objects.filter(id=waiting[0].id).update(queued_at=timezone.now() - dt.timedelta(minutes=5))
    run_async(flow.process_batch, [str(good.id), str(bad.id)])

    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("modalkit_jobs_submitted_total", model=model) == 5
    assert delta("modalkit_jobs_finished_total", model=model, status="succeeded") == 1
    assert delta("modalkit_jobs_finished_total", model=model, status="failed") == 1
    for histogram in ("modalkit_job_wait_seconds", "modalkit_job_inference_seconds", "modalkit_job_total_seconds"):
        assert delta(f"{histogram}_count", model=model) == 2
        assert delta(f"{histogram}_bucket", model=model, le="+Inf") == 2
        assert (f"{histogram}_bucket", frozenset({"model": model, "le": "0.5"}.items())) in after
    assert delta("modalkit_deliveries_total", backend="memory", outcome="sent") == 2
    # The gauges are read from the database at scrape time.
    queued = Job.objects.filter(status=Job.Status.QUEUED).count()
    assert queued == 3
    assert value(after, "modalkit_queue_depth", model=model, priority="1") == queued
    assert 290 < value(after, "modalkit_oldest_queued_seconds") < 3600
    assert value(after, "modalkit_deliveries_unsent", backend="memory") == 0
    assert value(after, "modalkit_metrics_database_up") == 1


@pytest.mark.django_db
def test_sweep_actions_and_modal_errors_are_counted(enabled: None, recording_waker: Any, run_async: Any) -> None:
    before = scrape()
    job = flow.claim_one(flow.submit())
    Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    SweepState.objects.all().delete()
    result = run_async(sweeper.sweep_once)
    assert result.jobs_to_wake == [job.id]  # reclaimed, and the workers nudged
    backend = ModalBackend(class_name="SentimentService", app_name="app-dev", timeout=5)
    backend._error(modal_errors.NotFoundError("no app"))
    backend._error(ValueError("raised by the pipeline"))
    after = scrape()
    assert (
        value(after, "modalkit_sweep_actions_total", action="reclaimed")
        - value(before, "modalkit_sweep_actions_total", action="reclaimed")
        == 1
    )
    for kind in ("NotFoundError", "pipeline"):
        assert (
            value(after, "modalkit_modal_errors_total", kind=kind)
            - value(before, "modalkit_modal_errors_total", kind=kind)
            == 1
        )


def test_recording_is_off_when_disabled_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    from modalkit_django.metrics.registry import instruments

    counter = instruments().submitted.labels(model="off-model")
    metrics.jobs_submitted(["off-model"])
    assert counter._value.get() == 0
    with metrics_settings(ENABLED=True):
        metrics.jobs_submitted(["off-model"])
        metrics.jobs_finished([object()], inference_seconds=1.0)  # type: ignore[list-item]
    assert counter._value.get() == 1
    assert "Could not record the jobs_finished metric" in caplog.text


# --- Multi-process mode --------------------------------------------------------------

RECORD = """
import django, sys
django.setup()
from modalkit_django import metrics
metrics.jobs_submitted(["mp-model"] * int(sys.argv[1]))
metrics.modal_error(TimeoutError())
metrics.process_exited()
"""


def process_env(directory: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "MODALKIT_TEST_METRICS": json.dumps({"ENABLED": True}),
    }


@pytest.mark.django_db
def test_two_processes_are_added_up_in_one_scrape(
    enabled: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = process_env(tmp_path)
    for count in ("2", "3"):
        subprocess.run([sys.executable, "-c", RECORD, count], cwd=ROOT, env=env, check=True, timeout=60)
    assert len(list(tmp_path.glob("counter_*.db"))) == 2  # one file per process

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    samples = scrape()
    assert value(samples, "modalkit_jobs_submitted_total", model="mp-model") == 5
    assert value(samples, "modalkit_modal_errors_total", kind="TimeoutError") == 2
    assert value(samples, "modalkit_metrics_database_up") == 1  # the database's gauges too


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_jobs_run_by_two_workers_are_scraped_from_the_shared_directory(
    start_worker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "MODALKIT_TEST_METRICS": json.dumps({"ENABLED": True})}
    start_worker(**env)
    start_worker(**env)
    jobs = [
        modalkit_django.submit_job(message={"text": f"a great film {n}"}, success_queue="results") for n in range(12)
    ]
    model = jobs[0].model_name
    wait_until(
        lambda: Job.objects.filter(status=Job.Status.SUCCEEDED).count() == len(jobs), timeout=60, what="the jobs"
    )

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with metrics_settings(ENABLED=True):

        def delivered() -> dict[Any, float] | None:
            samples = scrape()
            sent = value(samples, "modalkit_deliveries_total", backend="memory", outcome="sent")
            return samples if sent == len(jobs) else None

        samples = wait_until(delivered, what="the deliveries to be counted")
    assert value(samples, "modalkit_jobs_finished_total", model=model, status="succeeded") == len(jobs)
    assert value(samples, "modalkit_job_inference_seconds_bucket", model=model, le="+Inf") == len(jobs)
    assert value(samples, "modalkit_queue_depth", model=model, priority="1") == 0
