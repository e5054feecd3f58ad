"""A pipeline for fault tests: the first run of an input naming a marker file hangs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

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
