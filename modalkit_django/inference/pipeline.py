"""The inference pipeline contract: preprocess → predict → postprocess over a batch.

A pipeline is ModalKit's ``InferencePipeline`` with its input and output types
declared on the class, so the Django side can validate requests and type its API
without loading the model. Construction is where weights are loaded; keep module
imports light so Django can import the class cheaply.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Generator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

__all__ = ["InferenceOutputModel", "InferencePipeline"]


class InferenceOutputModel(BaseModel):
    """Base for a pipeline's output, as ModalKit's: ``status``, ``error`` and any extra fields.

    ``status`` other than ``"success"`` marks that one input as failed, with
    ``error`` saying why; the rest of the batch is unaffected.

    One difference, on purpose: ``status`` defaults to ``"success"`` where ModalKit
    requires it, so an output need not repeat it; every output ModalKit accepts is
    accepted here with the same values. ModalKit declares no ``meta`` field either: it
    sets the request's ``meta`` on the output as an extra just before sending, and the
    queue message here carries it the same way (:func:`modalkit_django.messages.queue_payload`).
    """

    model_config = ConfigDict(extra="allow")

    status: str = "success"
    error: str | None = None


class InferencePipeline(ABC):
    """One model version, run over a batch of validated inputs.

    Subclasses set ``input_model`` and ``output_model`` and implement the three
    steps. ``run_inference`` must return one output per input, in input order.
    """

    input_model: ClassVar[type[BaseModel]]
    output_model: ClassVar[type[InferenceOutputModel]]

    def __init__(
        self,
        model_name: str,
        all_model_data_folder: str,
        common_settings: dict[str, Any],
        **model_settings: Any,
    ) -> None:
        self.model_name = model_name
        self.all_model_data_folder = all_model_data_folder
        self.common_settings = common_settings
        self.model_settings = model_settings

    def run_inference(self, input_list: list[BaseModel]) -> list[InferenceOutputModel]:
        preprocessed = self.preprocess(input_list)
        raw_output = self.predict(input_list, preprocessed)
        if inspect.isgenerator(raw_output):
            # A generator predict (see .progress) outside a stream, as for POST /predict:
            # what it yields has nowhere to go; what it returns is the output.
            raw_output = _returned(raw_output)
        return self.postprocess(input_list, raw_output)

    @abstractmethod
    def preprocess(self, input_list: list[BaseModel]) -> dict[str, Any]: ...

    @abstractmethod
    def predict(self, input_list: list[BaseModel], preprocessed_data: dict[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    def postprocess(self, input_list: list[BaseModel], raw_output: dict[str, Any]) -> list[InferenceOutputModel]: ...

    def on_volume_reload(self) -> None:  # noqa: B027 (an optional hook, not a step to implement)
        """Called after the Modal volumes were reloaded; override to reload weights."""


def _returned(steps: Generator[Any, None, Any]) -> Any:
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
