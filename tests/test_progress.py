"""Progress and partial outputs: the pipeline protocol, the job verb, and the engine's stream."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import OperationalError
from django.db.models import F
from django.test import override_settings

import modalkit_django
from modalkit_django.clients import get_inference_backend
from modalkit_django.inference.progress import Progress, is_streaming, run_stream
from modalkit_django.models import Job, JobOutput
from modalkit_django.models.jobs import ProgressReport
from modalkit_django.worker import streaming
from project.sentiment import SentimentPipeline

from . import flow
from .progress_pipelines import StepsPipeline

pytestmark = pytest.mark.django_db

PIPELINE = "tests.progress_pipelines.StepsPipeline"


def pipeline() -> StepsPipeline:
    return StepsPipeline(model_name="sentiment", all_model_data_folder="/tmp", common_settings={"fail_word": "explode"})


@pytest.fixture
def steps_pipeline() -> Iterator[None]:
    with override_settings(MODALKIT={**settings.MODALKIT, "PIPELINE": PIPELINE}):
        yield


# --- The protocol ------------------------------------------------------------------


def test_a_generator_predict_is_streaming_and_a_plain_one_is_not() -> None:
    assert is_streaming(StepsPipeline)
    assert not is_streaming(SentimentPipeline)


def test_a_stream_gives_progress_and_partial_outputs_in_order_then_the_outcome() -> None:
    events = list(run_stream(pipeline(), {"text": "steps 2 good"}))
    assert events == [
        {"type": "progress", "progress": 0.5, "message": "step 1 of 2"},
        {"type": "output", "output": {"step": 1}},
        {"type": "progress", "progress": 1.0, "message": "step 2 of 2"},
        {"type": "output", "output": {"step": 2}},
        {
            "type": "outcome",
            "outcome": {"ok": True, "output": {"status": "success", "sentiment": "positive", "confidence": 0.95}},
        },
    ]


def test_a_stream_ends_with_a_failed_outcome_for_bad_input_or_a_bad_partial_output() -> None:
    [invalid] = list(run_stream(pipeline(), {"text": ""}))
    assert invalid["outcome"]["error"]["type"] == "ValidationError"
    [unstorable] = list(run_stream(pipeline(), {"text": "nan"}))
    assert unstorable["outcome"] == {
        "ok": False,
        "error": {"type": "ValueError", "message": unstorable["outcome"]["error"]["message"]},
    }
    [*_, exploded] = list(run_stream(pipeline(), {"text": "steps 1 explode"}))
    assert exploded["outcome"]["error"]["type"] == "ValueError"


def test_progress_is_clamped_and_a_generator_must_return_its_output() -> None:
    class Sloppy(SentimentPipeline):
        def predict(self, input_list: Any, preprocessed_data: Any) -> Any:  # type: ignore[override]
            yield Progress(7, "m" * 300)

    first, last = run_stream(Sloppy("m", "/tmp", {}), {"text": "x"})
    assert first == {"type": "progress", "progress": 1.0, "message": "m" * 255}
    assert last["outcome"]["error"]["type"] == "TypeError"
    assert "must return its raw output" in last["outcome"]["error"]["message"]


# --- The job verb -----------------------------------------------------------------


def running_job(text: str = "good") -> Job:
    return flow.claim_one(modalkit_django.submit_job(message={"text": text}))


def test_reports_append_partial_outputs_and_keep_the_latest_progress() -> None:
    job = running_job()
    token = job.lease_token
    assert token is not None
    first = ProgressReport(job.id, progress=0.25, message="a", outputs=[{"n": 1}], reset=True)
    assert Job.objects.report_progress([first], token=token) == {job.id}
    Job.objects.report_progress([ProgressReport(job.id, outputs=[{"n": 2}, {"n": 3}], start=1)], token=token)
    job.refresh_from_db()
    assert (job.progress, job.progress_message, job.partial_outputs) == (0.25, "a", [{"n": 1}, {"n": 2}, {"n": 3}])
    assert job.output_count == 3
    # The job runs again (a retry: claimed anew): its first write starts again, and the
    # earlier run's outputs are gone, not spliced before the new ones.
    Job.objects.filter(id=job.id).update(runs=F("runs") + 1)
    Job.objects.report_progress([ProgressReport(job.id, outputs=[{"n": 9}], reset=True)], token=token)
    job.refresh_from_db()
    assert (job.progress, job.progress_message, job.partial_outputs, job.output_count) == (None, "", [{"n": 9}], 1)
    assert JobOutput.objects.filter(job=job).count() == 1  # each output one row, written once


def test_reports_are_written_only_under_the_jobs_own_lease_while_it_runs() -> None:
    job = running_job()
    queued = modalkit_django.submit_job(message={"text": "good"})
    report = ProgressReport(job.id, progress=0.5, outputs=[{"n": 1}])
    assert Job.objects.report_progress([report], token=uuid.uuid4()) == set()
    assert Job.objects.report_progress([ProgressReport(queued.id, progress=0.5)], token=job.lease_token) == set()
    flow.finish([(job, flow.OUTPUT)])
    assert Job.objects.report_progress([report], token=job.lease_token) == set()
    job.refresh_from_db()
    assert (job.progress, job.partial_outputs) == (None, [])


@pytest.mark.django_db(databases=["default", "embedded"])
def test_the_same_reports_on_sqlite() -> None:
    embedded = Job.objects.db_manager("embedded")
    job = embedded.create(model_name="sentiment", message={"text": "good"})
    other = embedded.create(model_name="sentiment", message={"text": "good"})
    [job] = embedded.claim(limit=1, lease_seconds=30, only=[job.id])
    token = job.lease_token
    assert token is not None
    assert embedded.report_progress([], token=token) == set()
    first = ProgressReport(job.id, progress=0.25, message="a", outputs=[{"n": 1}], reset=True)
    assert embedded.report_progress([first, ProgressReport(other.id, progress=0.5)], token=token) == {job.id}
    embedded.report_progress([ProgressReport(job.id, outputs=[{"n": 2}], start=1)], token=token)
    assert embedded.report_progress([ProgressReport(job.id, progress=0.9)], token=uuid.uuid4()) == set()
    job.refresh_from_db()
    assert (job.progress, job.progress_message, job.partial_outputs) == (0.25, "a", [{"n": 1}, {"n": 2}])
    assert embedded.get(id=other.id).progress is None


# --- The engine, with the local backend ----------------------------------------------


def test_the_engine_stores_progress_partial_outputs_and_the_final_result(run_async: Any, steps_pipeline: None) -> None:
    jobs = [modalkit_django.submit_job(message={"text": f"steps 3 {word}"}) for word in ("good", "bad")]
    run_async(flow.process_batch, [job.id for job in jobs])
    good, bad = (Job.objects.get(id=job.id) for job in jobs)
    assert (good.status, good.result["sentiment"], bad.result["sentiment"]) == ("succeeded", "positive", "negative")
    assert (good.progress, good.progress_message) == (1.0, "step 3 of 3")
    assert good.partial_outputs == bad.partial_outputs == [{"step": 1}, {"step": 2}, {"step": 3}]


def test_a_failing_generator_fails_its_job_only_and_keeps_what_it_reported(
    run_async: Any, steps_pipeline: None
) -> None:
    failing = modalkit_django.submit_job(message={"text": "steps 2 explode"})
    fine = modalkit_django.submit_job(message={"text": "steps 1 good"})
    run_async(flow.process_batch, [failing.id, fine.id])
    failing.refresh_from_db()
    fine.refresh_from_db()
    assert (failing.status, failing.error["type"], failing.partial_outputs) == (
        "failed",
        "ValueError",
        [{"step": 1}, {"step": 2}],
    )
    assert fine.status == "succeeded"


def test_a_chatty_generator_is_written_in_a_few_statements(run_async: Any, steps_pipeline: None) -> None:
    job = flow.claim_one(modalkit_django.submit_job(message={"text": "fast 2000 good"}))
    writes: list[int] = []

    async def write(reports: list[ProgressReport], token: uuid.UUID) -> set[uuid.UUID]:
        writes.append(sum(len(report.outputs) for report in reports))
        return await sync_to_async(Job.objects.report_progress)(reports, token=token)

    backend: Any = get_inference_backend()

    async def run() -> Any:
        return await streaming.predict_streaming(backend, [job], deadline=30, write=write, max_outputs=5000)

    [prediction] = run_async(run)
    assert prediction["sentiment"] == "positive"
    assert sum(writes) == 2000
    # Coalesced: far fewer statements than events.
    assert len(writes) < 200
    job.refresh_from_db()
    assert job.partial_outputs[:2] == [{"token": 0}, {"token": 1}] and len(job.partial_outputs) == 2000


def test_partial_outputs_over_the_cap_are_not_stored(run_async: Any, steps_pipeline: None) -> None:
    modalkit = {
        **settings.MODALKIT,
        "PIPELINE": PIPELINE,
        "WORKER": {**settings.MODALKIT["WORKER"], "MAX_PARTIAL_OUTPUTS": 2},
    }
    with override_settings(MODALKIT=modalkit):
        job = modalkit_django.submit_job(message={"text": "steps 4 good"})
        run_async(flow.process_batch, [job.id])
    job.refresh_from_db()
    assert (job.status, job.partial_outputs, job.progress) == ("succeeded", [{"step": 1}, {"step": 2}], 1.0)


def test_a_stream_past_the_deadline_times_out(run_async: Any, steps_pipeline: None, tmp_path: Any) -> None:
    gate = tmp_path / "gate"
    job = flow.claim_one(modalkit_django.submit_job(message={"text": f"steps 1 {gate} good"}))

    async def run() -> Any:
        async def write(reports: list[ProgressReport], token: uuid.UUID) -> set[uuid.UUID]:
            return {job.id}

        backend: Any = get_inference_backend()
        try:
            return await streaming.predict_streaming(backend, [job], deadline=0.3, write=write, max_outputs=10)
        finally:
            gate.touch()  # the model's thread ends; the event loop can close

    [prediction] = run_async(run)
    assert type(prediction).__name__ == "InferenceTimeout"


def test_outside_a_stream_a_generator_pipelines_batch_gives_its_returned_output() -> None:
    """POST /predict and the plain batch path: what predict yields is dropped, what it returns counts."""
    from modalkit_django.inference.batch import run_batch

    outcomes = run_batch(pipeline(), [{"text": "steps 2 good"}, {"text": "steps 1 bad"}])
    assert [outcome["output"]["sentiment"] for outcome in outcomes] == ["positive", "negative"]


def test_a_stream_whose_lease_was_taken_stops_and_writes_nothing(
    run_async: Any, steps_pipeline: None, tmp_path: Any
) -> None:
    """Reclaimed meanwhile (another worker holds it now): this worker's stream stops at once,
    without waiting for the model's next event (it waits at its gate)."""
    gate = tmp_path / "gate"
    job = flow.claim_one(modalkit_django.submit_job(message={"text": f"steps 3 {gate} good"}))
    Job.objects.filter(id=job.id).update(lease_token=uuid.uuid4())

    async def run() -> Any:
        async def write(reports: list[ProgressReport], token: uuid.UUID) -> set[uuid.UUID]:
            return await sync_to_async(Job.objects.report_progress)(reports, token=token)

        backend: Any = get_inference_backend()
        try:
            return await streaming.predict_streaming(backend, [job], deadline=30, write=write, max_outputs=10)
        finally:
            gate.touch()

    [prediction] = run_async(run)
    assert prediction.error_type == "LeaseLost"
    job.refresh_from_db()
    assert (job.progress, job.partial_outputs) == (None, [])


def test_news_a_failed_write_carried_is_written_with_the_next(run_async: Any, steps_pipeline: None) -> None:
    """The database away past run_db's retries for one write: nothing reported is lost."""
    job = flow.claim_one(modalkit_django.submit_job(message={"text": "steps 3 good"}))
    # What an earlier attempt left: the failed first write was to clear it.
    Job.objects.filter(id=job.id).update(progress=0.3)
    JobOutput.objects.create(job=job, run=job.runs - 1, seq=0, output={"stale": True})
    calls: list[int] = []

    async def write(reports: list[ProgressReport], token: uuid.UUID) -> set[uuid.UUID]:
        calls.append(sum(len(report.outputs) for report in reports))
        if len(calls) == 1:
            raise OperationalError("the database is away (injected)")
        return await sync_to_async(Job.objects.report_progress)(reports, token=token)

    async def run() -> Any:
        backend: Any = get_inference_backend()
        return await streaming.predict_streaming(backend, [job], deadline=30, write=write, max_outputs=10)

    [prediction] = run_async(run)
    assert prediction["sentiment"] == "positive" and len(calls) >= 2
    job.refresh_from_db()
    assert (job.progress, job.partial_outputs) == (1.0, [{"step": 1}, {"step": 2}, {"step": 3}])
    assert not JobOutput.objects.filter(job=job, output={"stale": True}).exists()
