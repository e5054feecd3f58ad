"""A queue backend that keeps messages in the process: the embedded default and tests."""

from __future__ import annotations

import logging
from collections import defaultdict

from .base import BaseQueueBackend, QueueMessage

__all__ = ["MemoryBackend"]

logger = logging.getLogger(__name__)


class MemoryBackend(BaseQueueBackend):
    """Records every message by queue name and logs it.

    ``messages`` lives only as long as the process: read it in tests, or watch the
    log (logger ``modalkit_django.queues.memory``) when running the demo.
    """

    def __init__(self, alias: str, **options: object) -> None:
        super().__init__(alias, **options)
        self.messages: defaultdict[str, list[QueueMessage]] = defaultdict(list)

    async def asend(self, message: QueueMessage) -> str:
        self.messages[message.queue_name].append(message)
        logger.info("Queue %s ← %s %s", message.queue_name, message.message_id, message.body())
        return message.message_id

    def clear(self) -> None:
        self.messages.clear()
