"""A Modal deployment of the generator pipeline, served by the fake control plane.

No ``from __future__ import annotations``: Modal reads the annotations of ``@app.cls``
classes without evaluating them.
"""

from collections.abc import Iterator
from typing import Any

import modal

from modalkit_django.inference.config import config_paths, load_config
from modalkit_django.inference.service import ModalService

from .progress_pipelines import StepsPipeline

config = load_config(config_paths("modalkit.yaml"))
app = modal.App("modalkit-steps-dev")


@app.cls()
class StepsService(ModalService):
    """Only the stream: Modal refuses a class with a batched method and any other method."""

    pipeline_class = StepsPipeline
    config = config

    @modal.method()
    def predict_stream(self, message: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield from self.run_stream(message)
