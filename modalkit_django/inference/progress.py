"""Progress and partial outputs: a pipeline whose ``predict`` is a generator.

A pipeline reports while it runs by making ``predict`` a generator. Each value it yields
is either a :class:`Progress` (how far it is, from 0 to 1, and a short message) or a
partial output (a JSON object, or a pydantic model); what it *returns* is the raw output
handed to ``postprocess``, exactly what a plain ``predict`` returns::

    def predict(self, input_list, preprocessed_data):
        tokens = []
        for step, token in enumerate(self.model.generate(preprocessed_data["prompt"])):
            tokens.append(token)
            yield {"text": "".join(tokens)}               # a partial output
            yield Progress(step / self.max_tokens, "generating")
        return {"texts": ["".join(tokens)]}                # the final raw output

A generator ``predict`` is called with one input at a time (``input_list`` has one item),
locally and on Modal alike: its progress belongs to one job.

On the wire (from a Modal container to Django, through Modal's serialization) each step
is a plain dict, so that nothing but builtins crosses it::

    {"type": "progress", "progress": 0.25, "message": "generating"}
    {"type": "output", "output": {...}}          # a partial output
    {"type": "outcome", "outcome": {...}}        # last: run_batch's outcome for the input

Imports neither Django nor ``modal``: this runs in the container too.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .batch import Outcome, failure, to_outcome
from .pipeline import InferencePipeline

__all__ = ["Event", "Progress", "is_streaming", "run_stream"]

# One step of a stream, as it crosses the wire (see the module docstring).
Event = dict[str, Any]

# The longest progress message kept (the column's size).
MAX_MESSAGE_LENGTH = 255


@dataclass(frozen=True)
class Progress:
    """How far a running ``predict`` is: ``fraction`` from 0 to 1 (clamped), and why."""

    fraction: float
    message: str = ""


def is_streaming(pipeline_class: type[InferencePipeline]) -> bool:
    """Whether the pipeline's ``predict`` is a generator (reports progress while it runs)."""
    return inspect.isgeneratorfunction(pipeline_class.predict)


def run_stream(pipeline: InferencePipeline, message: Mapping[str, Any]) -> Iterator[Event]:
    """Run one input through a generator pipeline: its progress and partial outputs as they
    come, then its outcome (as :func:`~.batch.run_batch` would give it) as the last event.

    Whatever goes wrong, the last event is an outcome: a failed input fails its job only.
    """
    try:
        item = pipeline.input_model.model_validate(message)
    except ValidationError as exc:
        yield {"type": "outcome", "outcome": failure("ValidationError", str(exc))}
        return
    try:
        preprocessed = pipeline.preprocess([item])
        steps = pipeline.predict([item], preprocessed)
        if not inspect.isgenerator(steps):
            raise TypeError(f"{type(pipeline).__name__}.predict is not a generator")
        raw_output = yield from _events(steps)
        if not isinstance(raw_output, dict):
            raise TypeError(
                f"{type(pipeline).__name__}.predict returned {type(raw_output).__name__}; "
                "a generator predict must return its raw output (a dict) at the end"
            )
        [output] = pipeline.postprocess([item], raw_output)
        outcome = to_outcome(pipeline, output)
    except Exception as exc:
        outcome = failure(type(exc).__name__, str(exc))
    yield {"type": "outcome", "outcome": outcome}


def _events(steps: Generator[Any, None, Any]) -> Generator[Event, None, Any]:
    """The wire events for what ``predict`` yields; returns what it returned."""
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        if isinstance(step, Progress):
            yield progress_event(step.fraction, step.message)
        else:
            yield {"type": "output", "output": _json_object(step)}


def progress_event(fraction: float, message: str = "") -> Event:
    if not isinstance(fraction, (int, float)) or math.isnan(fraction):
        raise TypeError(f"Progress fraction must be a number from 0 to 1, not {fraction!r}")
    return {
        "type": "progress",
        "progress": min(max(float(fraction), 0.0), 1.0),
        "message": str(message)[:MAX_MESSAGE_LENGTH],
    }


def _json_object(value: Any) -> dict[str, Any]:
    """A partial output as JSON the database can hold; anything else fails the input."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if not isinstance(value, dict):
        raise TypeError(f"a partial output must be a dict or a pydantic model, not {type(value).__name__}")
    # Refused here, in the pipeline's own traceback, rather than later by the database.
    encoded = json.dumps(value, allow_nan=False)
    if "\\u0000" in encoded:
        raise ValueError("a partial output contains a NUL character, which JSON columns cannot hold")
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded


def outcome_of(event: Event) -> Outcome | None:
    """The outcome an event carries, if it is the last one."""
    if event.get("type") == "outcome":
        outcome: Outcome = event["outcome"]
        return outcome
    return None
