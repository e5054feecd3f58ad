"""Extra Modal deployments for tests, served by the fake control plane.

No ``from __future__ import annotations``: Modal reads the annotations of
``@app.cls`` classes without evaluating them.
"""

from typing import Any

import modal

from modalkit_django.inference.config import config_paths, load_config
from modalkit_django.inference.service import ModalService, batched

from .pipelines import EchoPipeline

config = load_config(config_paths("modalkit.yaml"))
app = modal.App("modalkit-echo-dev")


@app.cls()
class EchoService(ModalService):
    pipeline_class = EchoPipeline
    config = config

    @batched(config)
    def predict_batch(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.run_batch(messages)


@app.cls()
class BrokenService(ModalService):
    """A deployment whose code raises outside the pipeline: the SDK re-raises it here."""

    pipeline_class = EchoPipeline
    config = config

    @batched(config)
    def predict_batch(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise KeyError("predict_batch lost its model")
