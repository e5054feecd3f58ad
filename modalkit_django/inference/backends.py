"""Where Django sends inference: the one seam between the job service and a model.

``MODALKIT["INFERENCE"]["BACKEND"]`` names the class (local, Modal, or your own);
:func:`get_inference_backend` builds it once per process.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from ..conf import get_settings
from ..exceptions import InferenceError, PipelineError
from .batch import Outcome

__all__ = ["InferenceBackend", "Prediction", "get_inference_backend", "prediction_from_outcome"]

# A model output (a JSON object), or why there is none.
Prediction = dict[str, Any] | InferenceError


class InferenceBackend(ABC):
    """Runs the configured pipeline for a model; implementations differ in where."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abstractmethod
    async def apredict_many(self, model_name: str, messages: Sequence[dict[str, Any]]) -> list[Prediction]:
        """One prediction per message, in order; errors are returned, not raised."""

    async def apredict(self, model_name: str, message: dict[str, Any]) -> dict[str, Any]:
        """One model output, or raise the :class:`InferenceError` that prevented it."""
        [prediction] = await self.apredict_many(model_name, [message])
        if isinstance(prediction, InferenceError):
            raise prediction
        return prediction


def prediction_from_outcome(outcome: Outcome) -> Prediction:
    """Turn the wire outcome of :func:`~.batch.run_batch` into a :data:`Prediction`."""
    if outcome.get("ok"):
        return dict(outcome["output"])
    error = outcome.get("error") or {}
    return PipelineError(str(error.get("message", "")), error_type=str(error.get("type", "PipelineError")))


@functools.cache
def get_inference_backend() -> InferenceBackend:
    backend: InferenceBackend = get_settings().inference.build(what="MODALKIT['INFERENCE']")
    return backend


def reset_inference_backend(**kwargs: Any) -> None:
    """``setting_changed`` receiver."""
    if kwargs.get("setting", "MODALKIT") == "MODALKIT":
        get_inference_backend.cache_clear()
