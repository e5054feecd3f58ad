"""The inference client contract: the one seam between the job service and a model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

from ..conf import get_pipeline_class
from ..exceptions import InferenceError, ModalkitImproperlyConfigured, PipelineError
from ..inference.batch import Outcome
from ..inference.progress import is_streaming

__all__ = [
    "DetachedCalls",
    "InferenceBackend",
    "Prediction",
    "StreamingCalls",
    "prediction_from_outcome",
    "streaming_pipeline",
]

# A model output (a JSON object), or why there is none.
Prediction = dict[str, Any] | InferenceError


class InferenceBackend(ABC):
    """Runs the configured pipeline for a model; implementations differ in where.

    Named by dotted path in ``MODALKIT["INFERENCE"]["BACKEND"]`` and built once per
    process with ``OPTIONS`` as keyword arguments. Constructors must not connect
    anywhere: system checks build one to validate the options.
    """

    # Modules it needs that are optional dependencies (checked by modalkit_django.E011).
    requires: ClassVar[tuple[str, ...]] = ()

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

    def close(self) -> None:  # noqa: B027 (only clients holding connections override it)
        """Release connections; called when the settings change."""

    async def aclose(self) -> None:
        """Release connections from an event loop; called at worker shutdown."""
        self.close()


class DetachedCalls(ABC):
    """What a backend whose calls outlive the worker that started them adds (Modal's ``.spawn``).

    The engine starts a job's call, stores its id on the job, then waits for it; the next
    worker to claim the job re-attaches by id, and a cancel or a deadline cancels it. An
    :class:`InferenceBackend` that is not one keeps running a batch with ``apredict_many``.
    """

    @abstractmethod
    async def aspawn(self, model_name: str, message: dict[str, Any]) -> str:
        """Start one job's call; return its id, or raise the :class:`InferenceError` that stopped it."""

    @abstractmethod
    async def await_call(self, call_id: str, *, timeout: float) -> Prediction:
        """The call's prediction, waiting up to ``timeout`` seconds.

        Raises :class:`~modalkit_django.exceptions.InferenceCallLost` when the call is
        gone (expired, unknown, ended without an output) and :class:`TimeoutError` when it
        has not finished in time.
        """

    @abstractmethod
    async def acancel_calls(self, call_ids: Sequence[str]) -> None:
        """Cancel these calls, from an event loop; failures are logged, not raised."""

    @abstractmethod
    def cancel_calls(self, call_ids: Sequence[str]) -> None:
        """Cancel these calls from synchronous code (a request), bounded in time."""


class StreamingCalls(ABC):
    """What a backend that can run a generator pipeline adds: one job's run as a stream.

    The engine uses it when the pipeline's ``predict`` is a generator
    (:func:`~modalkit_django.inference.progress.is_streaming`): it stores the progress and
    partial outputs as they come, and the last event's outcome as the job's result.
    """

    @abstractmethod
    def astream(self, model_name: str, message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The wire events of :mod:`~modalkit_django.inference.progress` for one input, the
        outcome last; raises the :class:`InferenceError` that stopped the run."""


def streaming_pipeline() -> bool:
    """Whether the configured pipeline's ``predict`` is a generator; ``False`` without one
    (a worker that only calls Modal need not import the pipeline)."""
    try:
        return is_streaming(get_pipeline_class())
    except ModalkitImproperlyConfigured:
        return False


def prediction_from_outcome(outcome: Outcome) -> Prediction:
    """Turn the wire outcome of :func:`~modalkit_django.inference.batch.run_batch` into a :data:`Prediction`."""
    if outcome.get("ok"):
        return dict(outcome["output"])
    error = outcome.get("error") or {}
    output = error.get("output")
    return PipelineError(
        str(error.get("message", "")),
        error_type=str(error.get("type", "PipelineError")),
        output=output if isinstance(output, dict) else None,
    )
