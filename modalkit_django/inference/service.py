"""The Modal class that serves a pipeline: ModalKit's ``ModalService`` for this app.

Subclass it in your Modal app module, set ``pipeline_class`` and ``config``, and add
the batched method (its batch size must be known when the class is defined)::

    config = load_config(config_paths("modalkit.yaml"))
    app = modal.App(config.app_name)

    @app.cls(**cls_options(config, image=build_image(config)))
    class SentimentService(ModalService):
        pipeline_class = SentimentPipeline
        config = config

        @batched(config)
        def predict_batch(self, messages: list[dict]) -> list[dict]:
            return self.run_batch(messages)

Django calls ``SentimentService(model_name=...).predict_batch.remote.aio(message)``
once per job; Modal gathers concurrent calls into batches. Each call returns the
outcome of :func:`~modalkit_django.inference.batch.run_batch` for its input.

A pipeline whose ``predict`` is a generator (it reports progress, see
:mod:`.progress`) is called one job at a time with ``.remote_gen`` instead, on a
generator method (``predict_stream`` unless configured otherwise) that yields
:meth:`ModalService.run_stream`.

Imports ``modal`` but never Django: this runs in the container.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import modal
import modal.experimental

from .batch import DEFAULT_METHOD, Outcome, is_cuda_error, run_batch
from .config import ModalkitConfig
from .pipeline import InferencePipeline
from .progress import Event, outcome_of, run_stream

__all__ = ["DEFAULT_METHOD", "ModalService", "batched"]

logger = logging.getLogger(__name__)


def batched(config: ModalkitConfig) -> Callable[[Callable[..., Any]], Any]:
    """``@modal.batched`` sized by ``app_settings.batch_config``."""
    batch = config.app_settings.batch_config
    return modal.batched(max_batch_size=batch.max_batch_size, wait_ms=batch.wait_ms)


class ModalService:
    """Loads the pipeline for one ``model_name`` per container and runs batches on it."""

    pipeline_class: ClassVar[type[InferencePipeline]]
    config: ClassVar[ModalkitConfig]
    # A modal.parameter on every subclass: see __init_subclass__.
    model_name: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Modal only sees parameters declared on the decorated class itself, not on
        # its bases: without this, Modal cannot construct SentimentService(model_name=…).
        cls.model_name = modal.parameter(default="")
        cls.__annotations__ = {**inspect.get_annotations(cls), "model_name": str}

    @modal.enter()
    def load(self) -> None:
        """Build the pipeline with its ``model_entries`` settings and ``common`` settings."""
        settings = self.config.model_settings
        self.pipeline = self.pipeline_class(
            model_name=self.model_name,
            all_model_data_folder=str(settings.local_model_repository_folder),
            common_settings=settings.common,
            **self.config.model_entry(self.model_name),
        )
        self._last_reload = time.monotonic()

    def run_batch(self, messages: list[dict[str, Any]]) -> list[Outcome]:
        """Outcomes for a batch, in order; call this from the ``@batched`` method."""
        self.reload_volumes_if_due()
        return run_batch(self.pipeline, messages, on_exception=self._on_exception)

    def run_stream(self, message: dict[str, Any]) -> Iterator[Event]:
        """A generator pipeline's events for one input (see :mod:`.progress`); call this from
        a generator ``@modal.method`` (Django calls it with ``.remote_gen``)::

            @modal.method()
            def predict_stream(self, message: dict) -> Iterator[dict]:
                yield from self.run_stream(message)
        """
        self.reload_volumes_if_due()
        for event in run_stream(self.pipeline, message):
            outcome = outcome_of(event)
            if outcome is not None and not outcome.get("ok"):
                error = outcome.get("error") or {}
                if is_cuda_error(RuntimeError(str(error.get("message", "")))):
                    self._on_exception(RuntimeError(str(error.get("message"))))
            yield event

    def reload_volumes_if_due(self) -> None:
        """Every ``volume_reload_interval_seconds``: reload the volumes, then tell the pipeline."""
        deployment = self.config.app_settings.deployment_config
        interval = deployment.volume_reload_interval_seconds
        if interval is None or interval < 0 or time.monotonic() - self._last_reload < interval:
            return
        for mount_point, name in (deployment.volumes or {}).items():
            try:
                modal.Volume.from_name(name).reload()
            except Exception:
                logger.exception("Reloading volume %s at %s failed", name, mount_point)
        self._last_reload = time.monotonic()
        try:
            self.pipeline.on_volume_reload()
        except Exception:
            logger.exception("The pipeline's on_volume_reload hook failed; serving on")

    def _on_exception(self, exc: Exception) -> None:
        # A CUDA error usually means a broken GPU: stop taking inputs so Modal
        # replaces this container, as ModalKit does.
        if is_cuda_error(exc):
            logger.error("CUDA error; this container stops taking inputs: %s", exc)
            modal.experimental.stop_fetching_inputs()
