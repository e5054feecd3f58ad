"""Moved to ``modalkit_django.clients`` in 0.2; this path works, with a warning, until 1.0."""

from .moved import forward

__all__ = ["InferenceBackend", "Prediction", "get_inference_backend", "prediction_from_outcome"]  # noqa: F822 (forwarded by __getattr__)
__getattr__ = forward(__name__, "modalkit_django.clients", __all__)
