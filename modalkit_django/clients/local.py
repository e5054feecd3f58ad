"""Run the pipeline inside this process: the embedded default, and CPU-sized models."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..conf import get_config, get_pipeline_class
from ..inference.batch import run_batch
from ..inference.pipeline import InferencePipeline
from ..inference.progress import Event, outcome_of, run_stream
from .base import InferenceBackend, Prediction, StreamingCalls, prediction_from_outcome

__all__ = ["LocalBackend"]


class LocalBackend(StreamingCalls, InferenceBackend):
    """Loads each model's pipeline once, on first use, and runs batches in a thread.

    Batches for one model run one at a time: pipelines are rarely thread-safe.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._pipelines: dict[str, tuple[InferencePipeline, threading.Lock]] = {}
        self._loading = threading.Lock()

    async def apredict_many(self, model_name: str, messages: Sequence[dict[str, Any]]) -> list[Prediction]:
        outcomes = await asyncio.to_thread(self._run, model_name, list(messages))
        return [prediction_from_outcome(outcome) for outcome in outcomes]

    def _run(self, model_name: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        pipeline, lock = self._pipeline(model_name)
        with lock:
            return run_batch(pipeline, messages)

    async def astream(self, model_name: str, message: dict[str, Any]) -> AsyncIterator[Event]:
        """Run a generator pipeline in a thread; its events arrive here as they are yielded."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        stop = threading.Event()

        def put(item: Event | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the event loop closed: nobody is listening any more
                stop.set()

        def produce() -> None:
            try:
                pipeline, lock = self._pipeline(model_name)
                with lock:
                    for event in run_stream(pipeline, message):
                        put(event)
                        # The consumer gave up (a deadline): stop the model, free the lock.
                        if stop.is_set():
                            return
            except Exception as exc:
                put(exc)

        running = asyncio.ensure_future(asyncio.to_thread(produce))
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if outcome_of(event) is not None:
                    break
        finally:
            stop.set()
            if running.done():
                running.result()

    def _pipeline(self, model_name: str) -> tuple[InferencePipeline, threading.Lock]:
        with self._loading:
            if model_name not in self._pipelines:
                config = get_config()
                pipeline = get_pipeline_class()(
                    model_name=model_name,
                    all_model_data_folder=str(config.model_settings.local_model_repository_folder),
                    common_settings=config.model_settings.common,
                    **config.model_entry(model_name),
                )
                self._pipelines[model_name] = (pipeline, threading.Lock())
            return self._pipelines[model_name]
