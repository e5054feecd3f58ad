"""Generator pipelines on Modal: ``.remote_gen`` with the real SDK against the loopback fake."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

import modalkit_django
from modalkit_django.clients import get_inference_backend
from modalkit_django.clients.modal import ModalBackend
from modalkit_django.models import Job

from . import flow

pytestmark = pytest.mark.django_db

APP, CLS = "modalkit-steps-dev", "StepsService"


@pytest.fixture
def steps_on_modal(fresh_modal_fake: Any) -> Iterator[Any]:
    from .modal_progress_app import StepsService

    fresh_modal_fake.register_cls(APP, CLS, StepsService)
    inference = {
        "BACKEND": "modalkit_django.clients.modal.ModalBackend",
        "OPTIONS": {"app_name": APP, "class_name": CLS, "timeout": 10},
    }
    modalkit = {**settings.MODALKIT, "INFERENCE": inference, "PIPELINE": "tests.progress_pipelines.StepsPipeline"}
    with override_settings(MODALKIT=modalkit):
        yield fresh_modal_fake


def test_remote_gen_streams_the_pipelines_events_through_the_sdk(run_async: Any, steps_on_modal: Any) -> None:
    backend = get_inference_backend()
    assert isinstance(backend, ModalBackend)

    async def collect() -> list[dict[str, Any]]:
        return [event async for event in backend.astream("sentiment", {"text": "steps 2 good"})]

    events = run_async(collect)
    assert [event["type"] for event in events] == ["progress", "output", "progress", "output", "outcome"]
    assert [event["output"] for event in events if event["type"] == "output"] == [{"step": 1}, {"step": 2}]
    assert events[-1]["outcome"]["output"]["sentiment"] == "positive"
    stats = steps_on_modal.stats
    assert stats.rpcs["FunctionCallGetDataOut"] >= 1
    assert stats.spawned_calls == [] and stats.unimplemented == []


@pytest.mark.django_db(transaction=True)
def test_post_predict_takes_a_modal_streams_outcome(api: Any, steps_on_modal: Any) -> None:
    """The service class has the stream method only (Modal allows a batched method alone)."""
    response = api.post("/api/predict", {"message": {"text": "steps 2 good"}}, content_type="application/json")
    assert response.status_code == 200, response.content
    assert response.json()["sentiment"] == "positive"
    assert steps_on_modal.stats.rpcs["FunctionCallGetDataOut"] >= 1


def test_a_worker_stores_a_modal_streams_progress_and_result(run_async: Any, steps_on_modal: Any) -> None:
    good = modalkit_django.submit_job(message={"text": "steps 3 good"})
    bad = modalkit_django.submit_job(message={"text": "steps 2 explode"})
    run_async(flow.process_batch, [good.id, bad.id])
    good.refresh_from_db()
    bad.refresh_from_db()
    assert (good.status, good.result["sentiment"], good.progress) == ("succeeded", "positive", 1.0)
    assert good.partial_outputs == [{"step": 1}, {"step": 2}, {"step": 3}]
    # The pipeline raised after its partial outputs: the job fails, and keeps them.
    assert (bad.status, bad.error["type"], bad.partial_outputs) == ("failed", "ValueError", [{"step": 1}, {"step": 2}])
    assert Job.objects.filter(modal_call_id__isnull=False).count() == 0  # streamed, not spawned
