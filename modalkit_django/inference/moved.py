"""Names that moved out of ``inference`` in 0.2 keep working until 1.0, with a warning.

The old modules (``backends``, ``local``, ``modal_backend``) held Django-side code; they
now only forward to ``modalkit_django.clients``. Importing them still needs no Django:
the names are imported on first use.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["forward"]


def forward(module: str, target: str, names: list[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that forwards ``names`` to ``target`` with a DeprecationWarning."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(
            f"{module}.{name} moved to {target}.{name}; the old path goes away in 1.0",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(target), name)

    return __getattr__
