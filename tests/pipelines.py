"""Pipelines for tests: one that hangs once (fault tests), one that echoes (blob path), one that refuses."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from modalkit_django.inference.pipeline import InferenceOutputModel, InferencePipeline
from project.sentiment import SentimentPipeline


class HangOncePipeline(SentimentPipeline):
    """``{"text": "hang /tmp/marker"}`` creates the marker and sleeps a minute; once
    the marker exists the same input runs normally. A worker killed mid-sleep leaves
    a job that only its replacement can finish."""

    def predict(self, input_list: list[BaseModel], preprocessed_data: dict[str, Any]) -> dict[str, Any]:
        for text in preprocessed_data["texts"]:
            words = text.split()
            if words[:1] == ["hang"]:
                marker = Path(words[1])
                if not marker.exists():
                    marker.touch()
                    time.sleep(60)
        return super().predict(input_list, preprocessed_data)


class EchoRequest(BaseModel):
    text: str


class EchoResponse(InferenceOutputModel):
    text: str
    length: int


class EchoPipeline(InferencePipeline):
    """Returns its input: a payload as large as the input, for the blob path."""

    input_model = EchoRequest
    output_model = EchoResponse

    def preprocess(self, input_list: list[BaseModel]) -> dict[str, Any]:
        return {}

    def predict(self, input_list: list[BaseModel], preprocessed_data: dict[str, Any]) -> dict[str, Any]:
        return {"texts": [item.text for item in input_list]}  # type: ignore[attr-defined]

    def postprocess(self, input_list: list[BaseModel], raw_output: dict[str, Any]) -> list[InferenceOutputModel]:
        return [EchoResponse(text=text, length=len(text)) for text in raw_output["texts"]]


class SleepPipeline(SentimentPipeline):
    """``{"text": "sleep SECONDS LOG"}`` appends a line to LOG, then sleeps: a slow model
    whose every run can be counted."""

    def predict(self, input_list: list[BaseModel], preprocessed_data: dict[str, Any]) -> dict[str, Any]:
        for text in preprocessed_data["texts"]:
            words = text.split()
            if words[:1] == ["sleep"]:
                with Path(words[2]).open("a") as log:
                    log.write("ran\n")
                time.sleep(float(words[1]))
        return super().predict(input_list, preprocessed_data)


class RefusingPipeline(EchoPipeline):
    """Answers ``{"text": "refuse …"}`` with an output whose status is not "success", as a
    ModalKit pipeline reports an input it will not score; other inputs are echoed."""

    def postprocess(self, input_list: list[BaseModel], raw_output: dict[str, Any]) -> list[InferenceOutputModel]:
        return [
            EchoResponse(status="refused", error="not scored", text=text, length=0)
            if text.startswith("refuse")
            else EchoResponse(text=text, length=len(text))
            for text in raw_output["texts"]
        ]
