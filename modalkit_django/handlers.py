"""Backends by alias, built on first use from settings: Django's connection handler pattern.

Queue backends (``MODALKIT["QUEUES"]``) and the inference client (``MODALKIT["INFERENCE"]``)
are held the way Django holds ``CACHES`` and ``TASKS``: ``handler[alias]`` builds the
backend on first use, ``all()`` lists them and ``close_all()`` releases them. They are
closed when ``MODALKIT`` changes (``override_settings``) and at worker shutdown.

Unlike database connections, one backend serves the whole process: every thread and
event loop shares it (backends keep a client per event loop where they need one), so
the storage is a plain process-wide namespace, not Django's per-context ``Local``.
"""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, Generic, Protocol, TypeVar

from django.utils.connection import BaseConnectionHandler

from .conf import BackendSpec
from .exceptions import ModalkitImproperlyConfigured

__all__ = ["BackendHandler", "UnknownBackend"]

logger = logging.getLogger(__name__)


class Backend(Protocol):
    def close(self) -> None: ...
    async def aclose(self) -> None: ...


B = TypeVar("B", bound=Backend)


class UnknownBackend(ModalkitImproperlyConfigured):
    """An alias that is not configured."""


# BaseConnectionHandler is generic only in django-stubs, not at runtime.
class BackendHandler(BaseConnectionHandler, Generic[B]):  # type: ignore[type-arg]
    """Builds ``BackendSpec``s by alias and keeps them for the life of the process."""

    exception_class = UnknownBackend
    # Name the backends and their setting in errors, e.g. "queue backend", "MODALKIT['QUEUES']".
    kind = "backend"
    setting_label = ""

    def __init__(self) -> None:
        super().__init__()
        self._connections = SimpleNamespace()
        self._lock = threading.Lock()

    @abstractmethod
    def specs(self) -> Mapping[str, BackendSpec]:
        """The configured backends by alias, read from settings on first use."""

    def build(self, alias: str, spec: BackendSpec) -> B:
        backend: B = spec.build(alias, what=f"{self.setting_label}[{alias!r}]")
        return backend

    def configure_settings(self, settings: Any) -> dict[str, Any]:
        return dict(self.specs())

    def create_connection(self, alias: str) -> B:
        return self.build(alias, self.settings[alias])

    def __getitem__(self, alias: str) -> B:
        if alias not in self.settings:
            configured = ", ".join(self.settings)
            raise self.exception_class(f"No {self.kind} {alias!r} in {self.setting_label} (have: {configured})")
        with self._lock:
            backend: B = super().__getitem__(alias)
        return backend

    def built(self) -> list[B]:
        """The backends built so far (without reading the settings, which may be broken)."""
        return list(vars(self._connections).values())

    def close_all(self) -> None:
        """Release every backend built so far (they build their clients again if used)."""
        for backend in self.built():
            try:
                backend.close()
            except Exception:
                logger.warning("Closing %r failed", backend, exc_info=True)

    async def aclose_all(self) -> None:
        """Release every backend built so far, from the event loop whose clients they hold."""
        for backend in self.built():
            try:
                await backend.aclose()
            except Exception:
                logger.warning("Closing %r failed", backend, exc_info=True)

    def reset(self, **kwargs: Any) -> None:
        """``setting_changed`` receiver: close the backends and read the settings again."""
        if kwargs.get("setting", "MODALKIT") != "MODALKIT":
            return
        self.close_all()
        with self._lock:
            self._connections = SimpleNamespace()
            self.__dict__.pop("settings", None)
