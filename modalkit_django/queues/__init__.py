"""Queue backends by alias, built lazily from ``MODALKIT["QUEUES"]``, and routing.

``queues["memory"]`` is the backend for an alias; ``queues.route("ml_results")``
names the alias a queue name is sent through: the first ``QUEUE_ROUTES`` pattern
(shell-style, as in ``fnmatch``) that matches, else ``queue_config.backend`` from
``modalkit.yaml``.
"""

from __future__ import annotations

import fnmatch
import threading
from typing import Any

from ..conf import get_config, get_settings
from ..exceptions import ModalkitImproperlyConfigured
from .base import BaseQueueBackend, QueueMessage

__all__ = ["BaseQueueBackend", "QueueBackends", "QueueMessage", "queues"]


class QueueBackends:
    def __init__(self) -> None:
        self._backends: dict[str, BaseQueueBackend] = {}
        self._lock = threading.Lock()

    def __getitem__(self, alias: str) -> BaseQueueBackend:
        with self._lock:
            if alias not in self._backends:
                self._backends[alias] = self._create(alias)
            return self._backends[alias]

    def route(self, queue_name: str) -> str:
        for pattern, alias in get_settings().queue_routes:
            if fnmatch.fnmatchcase(queue_name, pattern):
                return alias
        return get_config().app_settings.queue_config.backend

    def reset(self, **kwargs: Any) -> None:
        """``setting_changed`` receiver: rebuild backends from the new settings."""
        if kwargs.get("setting", "MODALKIT") != "MODALKIT":
            return
        with self._lock:
            self._backends.clear()

    @staticmethod
    def _create(alias: str) -> BaseQueueBackend:
        spec = get_settings().queues.get(alias)
        if spec is None:
            raise ModalkitImproperlyConfigured(
                f"No queue backend {alias!r} in MODALKIT['QUEUES'] (have: {', '.join(get_settings().queues)})"
            )
        backend: BaseQueueBackend = spec.build(alias, what=f"Queue backend {alias!r}")
        return backend


queues = QueueBackends()
