"""The example pipeline as a Modal app: ``modal deploy project/modal_app.py``.

Imports neither Django nor the network: ``modalkit.yaml`` is read here, on the
deploying machine and again in the container, where the image carries it.
"""

from __future__ import annotations

from typing import Any

import modal

from modalkit_django.inference.config import config_paths, load_config
from modalkit_django.inference.deploy import build_image, cls_options, concurrent
from modalkit_django.inference.service import ModalService, batched
from project.sentiment import SentimentPipeline

CONFIG_FILES = config_paths("modalkit.yaml")
config = load_config(CONFIG_FILES)
app = modal.App(config.app_name)


@app.cls(**cls_options(config, image=build_image(config, config_files=CONFIG_FILES)))
@concurrent(config)
class SentimentService(ModalService):
    pipeline_class = SentimentPipeline
    config = config

    @batched(config)
    def predict_batch(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.run_batch(messages)
