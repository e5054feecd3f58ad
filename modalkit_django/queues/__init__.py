"""Queue backends by alias, built lazily from ``MODALKIT["QUEUES"]``, and routing.

``queues["memory"]`` is the backend for an alias; ``queues.route("ml_results")``
names the alias a queue name is sent through: the first ``QUEUE_ROUTES`` pattern
(shell-style, as in ``fnmatch``) that matches, else ``queue_config.backend`` from
``modalkit.yaml``. ``queues.close_all()`` releases their clients.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

from ..conf import BackendHandler, BackendSpec, get_config, get_settings
from .base import BaseQueueBackend, QueueMessage

__all__ = ["BaseQueueBackend", "QueueBackends", "QueueMessage", "queues"]


class QueueBackends(BackendHandler[BaseQueueBackend]):
    kind = "queue backend"
    setting_label = "MODALKIT['QUEUES']"

    def specs(self) -> Mapping[str, BackendSpec]:
        return get_settings().queues

    def route(self, queue_name: str) -> str:
        for pattern, alias in get_settings().queue_routes:
            if fnmatch.fnmatchcase(queue_name, pattern):
                return alias
        return get_config().app_settings.queue_config.backend


queues = QueueBackends()
