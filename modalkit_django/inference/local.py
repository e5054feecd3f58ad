"""Moved to ``modalkit_django.clients.local`` in 0.2; this path works, with a warning, until 1.0."""

from .moved import forward

__all__ = ["LocalBackend"]  # noqa: F822 (forwarded by __getattr__)
__getattr__ = forward(__name__, "modalkit_django.clients.local", __all__)
