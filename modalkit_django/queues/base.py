"""The queue backend contract every backend implements."""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync

__all__ = ["BaseQueueBackend", "BatchQueueBackend", "QueueMessage"]


@dataclass(frozen=True)
class QueueMessage:
    """One message for one queue, as stored on its ``QueueDelivery`` row."""

    message_id: str
    queue_name: str
    route: str
    job_id: str
    payload: dict[str, Any]

    def body(self) -> str:
        """The payload as compact JSON: what lands on the queue."""
        return json.dumps(self.payload, separators=(",", ":"), sort_keys=True)


class BaseQueueBackend(ABC):
    """Sends messages somewhere. Named by dotted path under an alias in ``MODALKIT["QUEUES"]``.

    ``asend`` returns the id the queue gave the message (or the message id when the
    queue has none) and raises :class:`~modalkit_django.exceptions.DeliveryError`
    (or any exception) when it could not send. It never reports failure by
    returning a value: the ledger retries what raised.
    """

    def __init__(self, alias: str, **options: Any) -> None:
        self.alias = alias
        self.options = options

    @abstractmethod
    async def asend(self, message: QueueMessage) -> str: ...

    async def asend_many(self, messages: Sequence[QueueMessage]) -> list[str | BaseException]:
        """Send several messages; one result (id or exception) per message, in order.

        Backends with a batch API (SQS ``SendMessageBatch``) override this.
        """
        return await asyncio.gather(*(self.asend(message) for message in messages), return_exceptions=True)

    def send(self, message: QueueMessage) -> str:
        return async_to_sync(self.asend)(message)

    def close(self) -> None:  # noqa: B027 (only backends holding clients override it)
        """Release clients, from any thread. Called when the settings change."""

    async def aclose(self) -> None:
        """Release clients from an event loop. Called at worker shutdown."""
        self.close()


class BatchQueueBackend(BaseQueueBackend):
    """For queues whose natural call is a batch (SQS ``SendMessageBatch``, a Redis
    pipeline): implement ``asend_many``; ``asend`` sends a batch of one."""

    async def asend(self, message: QueueMessage) -> str:
        [outcome] = await self.asend_many([message])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    @abstractmethod
    async def asend_many(self, messages: Sequence[QueueMessage]) -> list[str | BaseException]: ...
