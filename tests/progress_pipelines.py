"""Generator pipelines for the progress tests: the sentiment model, reporting as it goes."""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from modalkit_django.inference.progress import Progress
from project.sentiment import SentimentPipeline


class StepsPipeline(SentimentPipeline):
    """``{"text": "steps N [GATE] ..."}`` reports N steps (a progress and a partial output
    each), then waits until the file GATE exists (when given) before it returns: a test can
    watch the job running with all of its progress stored, then let it finish.
    ``{"text": "fast N ..."}`` yields N partial outputs at once (the coalescing test).
    ``{"text": "tokens N DELAY MARKER"}`` yields N tokens DELAY seconds apart, named for the
    run that made them: ``first-i`` while MARKER does not exist (it creates it), then
    ``again-i``; a client that spliced two runs would hold both kinds."""

    def predict(  # type: ignore[override]
        self, input_list: list[BaseModel], preprocessed_data: dict[str, Any]
    ) -> Generator[Any, None, dict[str, Any]]:
        words = preprocessed_data["texts"][0].split()
        if words[:1] == ["tokens"]:
            count, delay, marker = int(words[1]), float(words[2]), Path(words[3])
            run = "again" if marker.exists() else "first"
            marker.touch()
            for step in range(count):
                time.sleep(delay)
                yield {"token": f"{run}-{step}"}
        elif words[:1] == ["fast"]:
            for step in range(int(words[1])):
                yield {"token": step}
        elif words[:1] == ["steps"]:
            steps = int(words[1])
            for step in range(1, steps + 1):
                yield Progress(step / steps, f"step {step} of {steps}")
                yield {"step": step}
            if len(words) > 2 and words[2].startswith("/"):
                gate = Path(words[2])
                deadline = time.monotonic() + 60
                while not gate.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
        elif words[:1] == ["nan"]:
            yield {"value": float("nan")}
        return super().predict(input_list, preprocessed_data)
