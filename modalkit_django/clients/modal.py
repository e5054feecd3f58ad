"""Inference on Modal: call the deployed service class with the real ``modal`` SDK.

Select it with::

    MODALKIT["INFERENCE"] = {
        "BACKEND": "modalkit_django.clients.modal.ModalBackend",
        "OPTIONS": {"class_name": "SentimentService"},
    }

Options (all optional but ``class_name``):

``app_name``          the deployed app; default ``app_prefix`` + ``MODALKIT_APP_POSTFIX``
``class_name``        the ``@app.cls`` class name
``method``            the batched method; default ``predict_batch``
``environment_name``  the Modal environment; default the SDK's (``MODAL_ENVIRONMENT``)
``timeout``           our own deadline per call in seconds; default
                      ``deployment_config.timeout`` (the SDK alone would retry a dead
                      connection for about a minute)
``cancel_timeout``    seconds a request waits for its ``FunctionCall.cancel`` RPCs
                      before it returns (they go on in the background); default 5
``stream_method``     the generator method for pipelines whose ``predict`` is a
                      generator (called with ``.remote_gen``); default ``predict_stream``

One call per job, all of a batch concurrently, so Modal's ``@modal.batched`` sees them
together: ``.remote.aio`` for ``/predict``, and for async jobs ``.spawn.aio``, whose
``FunctionCall`` id the worker stores on the job (see :class:`.base.DetachedCalls`).
``modal`` is imported on first use only: it costs about a second, and forked workers
must not inherit its client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .. import metrics
from ..conf import get_config
from ..exceptions import (
    InferenceAuthError,
    InferenceCallLost,
    InferenceError,
    InferenceNotDeployed,
    InferenceTimeout,
    InferenceUnavailable,
    PipelineError,
)
from ..inference.batch import DEFAULT_METHOD
from ..inference.progress import Event, outcome_of
from .base import (
    DetachedCalls,
    InferenceBackend,
    Prediction,
    StreamingCalls,
    prediction_from_outcome,
    streaming_pipeline,
)

__all__ = ["ModalBackend"]

logger = logging.getLogger(__name__)

# The generator method a streaming pipeline's service class serves (ModalService.run_stream).
STREAM_METHOD = "predict_stream"

# Cancels sent from requests: a request waits for them only up to ``cancel_timeout``.
_cancels = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="modalkit-cancel")


class ModalBackend(StreamingCalls, DetachedCalls, InferenceBackend):
    requires = ("modal",)

    def __init__(
        self,
        *,
        class_name: str,
        app_name: str | None = None,
        method: str = DEFAULT_METHOD,
        environment_name: str | None = None,
        timeout: float | None = None,
        cancel_timeout: float = 5.0,
        stream_method: str = STREAM_METHOD,
    ) -> None:
        super().__init__(class_name=class_name, app_name=app_name, method=method, environment_name=environment_name)
        self.stream_method = stream_method
        self.cancel_timeout = cancel_timeout
        self.class_name = class_name
        self._app_name = app_name
        self.method = method
        self.environment_name = environment_name
        self._timeout = timeout
        self._lock = threading.Lock()
        # Per process: a forked worker looks the class up again with its own client.
        self._pid: int | None = None
        self._instances: dict[str, Any] = {}

    @property
    def app_name(self) -> str:
        return self._app_name or get_config().app_name

    @property
    def timeout(self) -> float:
        return self._timeout or float(get_config().app_settings.deployment_config.timeout)

    async def apredict_many(self, model_name: str, messages: Sequence[dict[str, Any]]) -> list[Prediction]:
        if streaming_pipeline():
            # Its service class has the stream method only (Modal allows a batched method alone).
            return list(await asyncio.gather(*(self._streamed(model_name, message) for message in messages)))
        method = getattr(self._instance(model_name), self.method)
        return list(await asyncio.gather(*(self._call(method, message) for message in messages)))

    async def _call(self, method: Any, message: dict[str, Any]) -> Prediction:
        try:
            outcome = await asyncio.wait_for(method.remote.aio(message), self.timeout)
        except Exception as exc:
            return self._error(exc)
        return self._prediction(outcome)

    async def astream(self, model_name: str, message: dict[str, Any]) -> AsyncIterator[Event]:
        # Not detached: a generator cannot be spawned. A job whose worker dies runs again.
        method = getattr(self._instance(model_name), self.stream_method)
        try:
            async for event in method.remote_gen.aio(message):
                if not isinstance(event, dict) or "type" not in event:
                    raise InferenceError(
                        f"{self.class_name}.{self.stream_method} yielded {type(event).__name__}, not an event",
                        error_type="UnexpectedOutput",
                    )
                yield event
        except InferenceError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc

    async def _streamed(self, model_name: str, message: dict[str, Any]) -> Prediction:
        try:
            async with asyncio.timeout(self.timeout):
                async for event in self.astream(model_name, message):
                    if (outcome := outcome_of(event)) is not None:
                        return prediction_from_outcome(outcome)
        except TimeoutError as exc:
            return self._error(exc)
        except InferenceError as exc:
            return exc
        return InferenceError(
            f"{self.class_name}.{self.stream_method} ended without an outcome", error_type="StreamEnded"
        )

    # --- Detached calls: async jobs ------------------------------------------------------

    async def aspawn(self, model_name: str, message: dict[str, Any]) -> str:
        method = getattr(self._instance(model_name), self.method)
        try:
            call = await asyncio.wait_for(method.spawn.aio(message), self.timeout)
        except Exception as exc:
            raise self._error(exc) from exc
        return str(call.object_id)

    async def await_call(self, call_id: str, *, timeout: float) -> Prediction:
        import modal
        import modal.exception as modal_errors

        timeout = min(timeout, self.timeout)
        try:
            # from_id sends nothing; get() long-polls FunctionGetOutputs and raises the
            # builtin TimeoutError when the call has not finished in time.
            async with asyncio.timeout(timeout + 5):  # the SDK's own retries, bounded
                outcome = await modal.FunctionCall.from_id(call_id).get.aio(timeout=timeout)
        except TimeoutError:
            raise
        except (
            modal_errors.OutputExpiredError,
            modal_errors.NotFoundError,
            modal_errors.InternalFailure,
            modal_errors.RemoteError,
        ) as exc:
            # Gone, or ended without an output (terminated, lost container): none will come.
            metrics.modal_error(exc)
            error_type = type(exc).__name__
            raise InferenceCallLost(f"Modal call {call_id} has no output: {exc}", error_type=error_type) from exc
        except Exception as exc:
            return self._error(exc)
        return self._prediction(outcome)

    async def acancel_calls(self, call_ids: Sequence[str]) -> None:
        await asyncio.gather(*(self._cancel(call_id) for call_id in call_ids))

    async def _cancel(self, call_id: str) -> None:
        import modal

        try:
            async with asyncio.timeout(self.cancel_timeout):
                await modal.FunctionCall.from_id(call_id).cancel.aio()
        except Exception as exc:
            logger.warning("Could not cancel Modal call %s: %s", call_id, exc)

    def cancel_calls(self, call_ids: Sequence[str]) -> None:
        if call_ids:
            pending = _cancels.submit(asyncio.run, self.acancel_calls(call_ids))
            concurrent.futures.wait([pending], timeout=self.cancel_timeout)

    # --- Helpers -------------------------------------------------------------------------

    def _prediction(self, outcome: Any) -> Prediction:
        if not isinstance(outcome, dict) or "ok" not in outcome:
            return InferenceError(
                f"{self.class_name}.{self.method} returned {type(outcome).__name__}, not an outcome",
                error_type="UnexpectedOutput",
            )
        return prediction_from_outcome(outcome)

    def _instance(self, model_name: str) -> Any:
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._instances = os.getpid(), {}
            if model_name not in self._instances:
                import modal

                # Lazy: nothing touches the network until the first call.
                service = modal.Cls.from_name(self.app_name, self.class_name, environment_name=self.environment_name)
                self._instances[model_name] = service(model_name=model_name)
            return self._instances[model_name]

    def _error(self, exc: Exception) -> InferenceError:
        """Map what the SDK (or the remote pipeline) raised onto our exception tree."""
        import modal.exception as modal_errors

        metrics.modal_error(exc)

        target = f"{self.app_name}/{self.class_name}"
        error_type = type(exc).__name__
        if isinstance(exc, TimeoutError):
            return InferenceTimeout(f"{target} did not answer within {self.timeout:g} s")
        if isinstance(exc, modal_errors.NotFoundError):
            return InferenceNotDeployed(f"{target} is not deployed: {exc}", error_type=error_type)
        if isinstance(exc, modal_errors.AuthError):
            return InferenceAuthError(f"Modal refused the credentials: {exc}", error_type=error_type)
        if isinstance(exc, modal_errors.FunctionTimeoutError):
            return InferenceTimeout(f"{target} ran past its Modal timeout: {exc}", error_type=error_type)
        if isinstance(
            exc,
            (
                modal_errors.ConnectionError,
                modal_errors.InternalFailure,
                modal_errors.ServiceError,
                modal_errors.ResourceExhaustedError,
            ),
        ):
            return InferenceUnavailable(f"{target} is unavailable: {exc}", error_type=error_type)
        if isinstance(exc, modal_errors.Error):
            logger.warning("Modal error calling %s", target, exc_info=exc)
            return InferenceError(f"{target} failed: {exc}", error_type=error_type)
        # Anything else was raised by the remote code and re-raised here by the SDK.
        return PipelineError(str(exc), error_type=error_type)
