"""How Modal's errors map onto ours: the table behind /predict's 502/503/504 and job retries.

The same paths run against the real SDK and a fake control plane in test_modal.py;
this covers every row of the table quickly.
"""

from __future__ import annotations

import modal.exception as modal_errors
import pytest

from modalkit_django.clients.modal import ModalBackend
from modalkit_django.exceptions import (
    InferenceAuthError,
    InferenceError,
    InferenceNotDeployed,
    InferenceTimeout,
    InferenceUnavailable,
    PipelineError,
)


@pytest.mark.parametrize(
    ("raised", "expected", "retryable"),
    [
        (TimeoutError(), InferenceTimeout, False),
        (modal_errors.NotFoundError("no app"), InferenceNotDeployed, False),
        (modal_errors.AuthError("Token missing"), InferenceAuthError, False),
        (modal_errors.FunctionTimeoutError("too slow"), InferenceTimeout, False),
        (modal_errors.ConnectionError("refused"), InferenceUnavailable, True),
        (modal_errors.InternalFailure("oops"), InferenceUnavailable, True),
        (modal_errors.ServiceError("503"), InferenceUnavailable, True),
        (modal_errors.ResourceExhaustedError("quota"), InferenceUnavailable, True),
        (modal_errors.InvalidError("bad args"), InferenceError, False),
        (ValueError("raised by the pipeline"), PipelineError, False),
    ],
)
def test_error_mapping(raised: Exception, expected: type[InferenceError], retryable: bool) -> None:
    backend = ModalBackend(class_name="SentimentService", app_name="app-dev", timeout=5)
    error = backend._error(raised)
    assert type(error) is expected
    assert error.retryable is retryable
    assert error.error_type == (type(raised).__name__ if not isinstance(raised, TimeoutError) else "InferenceTimeout")


def test_defaults_come_from_modalkit_yaml() -> None:
    backend = ModalBackend(class_name="SentimentService")
    assert backend.app_name == "modalkit-sentiment-dev"
    assert backend.timeout == 300
    assert backend.method == "predict_batch"
