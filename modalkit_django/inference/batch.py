"""Run a pipeline over a batch so that one bad input cannot fail its batchmates.

Both the local backend and the Modal service call :func:`run_batch`, so a job
fails in the same way wherever its model runs. Each input yields one *outcome*,
a JSON-ready dict that crosses the wire to Django unchanged::

    {"ok": True, "output": {...}}
    {"ok": False, "error": {"type": "ValueError", "message": "..."}}
    {"ok": False, "error": {"type": "InferenceError", "message": "...", "output": {...}}}  # status != "success"
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from .pipeline import InferencePipeline

__all__ = ["DEFAULT_METHOD", "Outcome", "failure", "is_cuda_error", "run_batch", "success", "to_outcome"]

logger = logging.getLogger(__name__)

Outcome = dict[str, Any]

# The service method Django calls unless configured otherwise.
DEFAULT_METHOD = "predict_batch"


def success(output: Mapping[str, Any]) -> Outcome:
    return {"ok": True, "output": dict(output)}


def failure(error_type: str, message: str) -> Outcome:
    return {"ok": False, "error": {"type": error_type, "message": message}}


def run_batch(
    pipeline: InferencePipeline,
    messages: Sequence[Mapping[str, Any]],
    *,
    on_exception: Callable[[Exception], None] | None = None,
) -> list[Outcome]:
    """One outcome per message, in order.

    A batch that raises is run again one input at a time, so that one bad input fails
    only its own job; a CUDA error fails the whole batch at once instead (the GPU is not
    to be trusted after one). ``on_exception`` sees every exception the pipeline raised
    (the Modal service uses it to retire a container after a CUDA error).
    """
    outcomes: list[Outcome | None] = [None] * len(messages)
    valid: list[tuple[int, BaseModel]] = []
    for index, message in enumerate(messages):
        try:
            valid.append((index, pipeline.input_model.model_validate(message)))
        except ValidationError as exc:
            outcomes[index] = failure("ValidationError", str(exc))
    for (index, _), outcome in zip(valid, _infer(pipeline, [item for _, item in valid], on_exception), strict=True):
        outcomes[index] = outcome
    return [outcome for outcome in outcomes if outcome is not None]


def is_cuda_error(exc: BaseException) -> bool:
    """An error from the GPU itself: after one, the device is not to be trusted."""
    return "CUDA error" in str(exc)


def _infer(
    pipeline: InferencePipeline,
    inputs: list[BaseModel],
    on_exception: Callable[[Exception], None] | None,
) -> list[Outcome]:
    if not inputs:
        return []
    try:
        return _run(pipeline, inputs)
    except Exception as exc:
        if on_exception is not None:
            on_exception(exc)
        if len(inputs) == 1 or is_cuda_error(exc):
            # After a CUDA error the GPU is not to be trusted, so nothing runs on it again:
            # the whole batch fails, as ModalKit's does (and the container stops taking inputs).
            logger.warning("Inference failed for %d inputs of %s", len(inputs), pipeline.model_name, exc_info=True)
            return [failure(type(exc).__name__, str(exc)) for _ in inputs]
    # An ordinary error: find the culprit, each input alone, so its batchmates still succeed.
    outcomes: list[Outcome] = []
    for index, item in enumerate(inputs):
        try:
            outcomes += _run(pipeline, [item])
        except Exception as exc:
            if on_exception is not None:
                on_exception(exc)
            logger.warning("Inference failed for one input of %s", pipeline.model_name, exc_info=True)
            outcomes.append(failure(type(exc).__name__, str(exc)))
            if is_cuda_error(exc):
                outcomes += [failure(type(exc).__name__, str(exc)) for _ in inputs[index + 1 :]]
                break
    return outcomes


def _run(pipeline: InferencePipeline, inputs: list[BaseModel]) -> list[Outcome]:
    outputs = pipeline.run_inference(inputs)
    if len(outputs) != len(inputs):
        raise RuntimeError(
            f"{type(pipeline).__name__}.run_inference returned {len(outputs)} outputs for {len(inputs)} inputs"
        )
    return [to_outcome(pipeline, output) for output in outputs]


def to_outcome(pipeline: InferencePipeline, output: Any) -> Outcome:
    model = output if isinstance(output, BaseModel) else pipeline.output_model.model_validate(output)
    data = model.model_dump(mode="json")
    # Outputs built on ModalKit's own models count too: any output with a status field.
    status = getattr(model, "status", "success")
    if status != "success":
        outcome = failure("InferenceError", getattr(model, "error", None) or f"status {status!r}")
        # Kept whole: the failure message is the output as the pipeline returned it (ModalKit's).
        outcome["error"]["output"] = data
        return outcome
    data.pop("error", None)
    return success(data)
