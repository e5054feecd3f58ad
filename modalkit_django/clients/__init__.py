"""Django-side inference clients: where a job's model runs (in this process, or on Modal).

``MODALKIT["INFERENCE"]`` names the class; :func:`get_inference_backend` returns the one
instance this process uses, built on first use and closed when the settings change.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ..conf import BackendHandler, BackendSpec, get_settings
from .base import DetachedCalls, InferenceBackend, Prediction, prediction_from_outcome

__all__ = [
    "DetachedCalls",
    "InferenceBackend",
    "InferenceBackends",
    "Prediction",
    "acancel_calls",
    "cancel_calls",
    "get_inference_backend",
    "inference_backends",
    "prediction_from_outcome",
]

logger = logging.getLogger(__name__)

DEFAULT_ALIAS = "default"


class InferenceBackends(BackendHandler[InferenceBackend]):
    """``MODALKIT["INFERENCE"]`` as the one alias ``"default"``."""

    kind = "inference backend"
    setting_label = "MODALKIT['INFERENCE']"

    def specs(self) -> Mapping[str, BackendSpec]:
        return {DEFAULT_ALIAS: get_settings().inference}

    def build(self, alias: str, spec: BackendSpec) -> InferenceBackend:
        # Inference backends take only their OPTIONS (no alias): a public contract.
        backend: InferenceBackend = spec.build(what=self.setting_label)
        return backend


inference_backends = InferenceBackends()


def get_inference_backend() -> InferenceBackend:
    """The inference client of this process."""
    return inference_backends[DEFAULT_ALIAS]


def reset_inference_backend(**kwargs: Any) -> None:
    """``setting_changed`` receiver."""
    inference_backends.reset(**kwargs)


def cancel_calls(call_ids: Sequence[str]) -> None:
    """Cancel these detached calls (Modal ``FunctionCall``s) through this process's backend."""
    if (backend := _detached(call_ids)) is not None:
        backend.cancel_calls(call_ids)


async def acancel_calls(call_ids: Sequence[str]) -> None:
    """:func:`cancel_calls` from an event loop."""
    if (backend := _detached(call_ids)) is not None:
        await backend.acancel_calls(call_ids)


def _detached(call_ids: Sequence[str]) -> DetachedCalls | None:
    backend = get_inference_backend()
    if isinstance(backend, DetachedCalls):
        return backend
    if call_ids:
        logger.warning("Cannot cancel %d calls: %s has no detached calls", len(call_ids), type(backend).__name__)
    return None
