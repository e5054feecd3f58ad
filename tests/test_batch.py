"""run_batch: one outcome per input, in order, and one bad input never fails the others."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from modalkit_django.inference.batch import run_batch
from modalkit_django.inference.pipeline import InferenceOutputModel, InferencePipeline
from project.sentiment import SentimentPipeline


@pytest.fixture
def pipeline() -> SentimentPipeline:
    return SentimentPipeline("sentiment", "/tmp", {"fail_word": "explode"})


def test_outputs_come_back_in_input_order(pipeline: SentimentPipeline) -> None:
    outcomes = run_batch(pipeline, [{"text": "good"}, {"text": "bad"}, {"text": "meh"}])
    assert [outcome["output"]["sentiment"] for outcome in outcomes] == ["positive", "negative", "neutral"]
    assert all(outcome["ok"] for outcome in outcomes)


def test_a_raising_input_fails_alone(pipeline: SentimentPipeline) -> None:
    seen: list[Exception] = []
    outcomes = run_batch(pipeline, [{"text": "good"}, {"text": "explode"}, {"text": "bad"}], on_exception=seen.append)
    assert [outcome["ok"] for outcome in outcomes] == [True, False, True]
    assert outcomes[1]["error"] == {"type": "ValueError", "message": "the model cannot read 'explode'"}
    assert outcomes[2]["output"]["sentiment"] == "negative"
    # Once for the whole batch, once for the culprit alone.
    assert len(seen) == 2


def test_an_invalid_input_fails_alone(pipeline: SentimentPipeline) -> None:
    outcomes = run_batch(pipeline, [{"text": ""}, {"text": "good"}])
    assert outcomes[0]["ok"] is False
    assert outcomes[0]["error"]["type"] == "ValidationError"
    assert outcomes[1]["output"]["sentiment"] == "positive"


class Reporting(InferencePipeline):
    """A ModalKit-style pipeline that reports per-input errors through ``status``."""

    input_model = SentimentPipeline.input_model
    output_model = InferenceOutputModel

    def preprocess(self, input_list: list[BaseModel]) -> dict[str, Any]:
        return {}

    def predict(self, input_list: list[BaseModel], preprocessed_data: dict[str, Any]) -> dict[str, Any]:
        return {}

    def postprocess(self, input_list: list[BaseModel], raw_output: dict[str, Any]) -> list[InferenceOutputModel]:
        return [
            InferenceOutputModel(status="error", error="too long") if len(item.text) > 3 else InferenceOutputModel()  # type: ignore[attr-defined]
            for item in input_list
        ]


def test_status_error_outputs_are_failures() -> None:
    outcomes = run_batch(Reporting("m", "/tmp", {}), [{"text": "ok"}, {"text": "too long"}])
    assert outcomes[0] == {"ok": True, "output": {"status": "success"}}
    output = {"status": "error", "error": "too long"}  # kept whole: ModalKit sends it to the failure queue
    assert outcomes[1] == {"ok": False, "error": {"type": "InferenceError", "message": "too long", "output": output}}


class Miscounting(Reporting):
    def postprocess(self, input_list: list[BaseModel], raw_output: dict[str, Any]) -> list[InferenceOutputModel]:
        return []


def test_a_wrong_number_of_outputs_is_an_error() -> None:
    [outcome] = run_batch(Miscounting("m", "/tmp", {}), [{"text": "ok"}])
    assert outcome["ok"] is False
    assert "returned 0 outputs for 1 inputs" in outcome["error"]["message"]
