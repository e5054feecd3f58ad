"""Backends for tests, plugged in through the same settings a user would use."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from modalkit_django.clients import InferenceBackend, Prediction
from modalkit_django.exceptions import DeliveryError
from modalkit_django.queues.base import BaseQueueBackend, QueueMessage


class ScriptedInference(InferenceBackend):
    """Records every call; answers with ``script(messages)`` or a fixed positive output."""

    def __init__(self, delay: float = 0.0, **options: Any) -> None:
        super().__init__(delay=delay, **options)
        self.delay = delay
        self.calls: list[tuple[str, list[dict[str, Any]]]] = []
        self.script: Callable[[list[dict[str, Any]]], list[Prediction]] | None = None

    async def apredict_many(self, model_name: str, messages: Sequence[dict[str, Any]]) -> list[Prediction]:
        self.calls.append((model_name, list(messages)))
        await asyncio.sleep(self.delay)
        if self.script is not None:
            return self.script(list(messages))
        return [{"status": "success", "sentiment": "positive", "confidence": 1.0} for _ in messages]

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return [message for _, messages in self.calls for message in messages]


class FailingQueue(BaseQueueBackend):
    """Fails every send until ``healthy`` is set (class-wide: tests flip it)."""

    healthy = False
    sent: list[QueueMessage] = []

    async def asend(self, message: QueueMessage) -> str:
        if not FailingQueue.healthy:
            raise DeliveryError("the queue is down", alias=self.alias, queue_name=message.queue_name)
        FailingQueue.sent.append(message)
        return f"ext-{message.message_id}"


class SlowQueue(BaseQueueBackend):
    """Takes ``delay`` seconds to answer each send, as a slow webhook receiver would."""

    delay = 10.0

    async def asend(self, message: QueueMessage) -> str:
        await asyncio.sleep(SlowQueue.delay)
        return message.message_id
