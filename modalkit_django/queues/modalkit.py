"""An adapter for ModalKit-style queue backends: ``async send_message(queue_name, message) -> bool``.

A queue backend written for ModalKit works unchanged::

    MODALKIT["QUEUES"]["custom"] = {
        "BACKEND": "modalkit_django.queues.modalkit.ModalKitAdapter",
        "OPTIONS": {"queue_backend": "myapp.queues.MyCustomQueueBackend"},
    }

ModalKit treats ``False`` and exceptions as "log and carry on"; here both are a failed
attempt, retried with backoff like any other, so the result is not lost. (An adaptee
that raises :class:`~modalkit_django.exceptions.PermanentDeliveryError` makes the
delivery dead at once.)
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Protocol

from django.utils.module_loading import import_string

from ..exceptions import DeliveryError, ModalkitImproperlyConfigured
from .base import BaseQueueBackend, QueueMessage

__all__ = ["ModalKitAdapter", "ModalKitQueueBackend"]


class ModalKitQueueBackend(Protocol):
    """What ModalKit calls a queue backend."""

    async def send_message(self, queue_name: str, message: str) -> bool: ...


class ModalKitAdapter(BaseQueueBackend):
    """Sends through a ModalKit-style object's ``send_message``, with the JSON body as ``message``.

    Options:

    ``queue_backend``
        Dotted path of the object, or of a class or factory that makes it (required).
    ``kwargs``
        Keyword arguments for that class or factory (default none).
    ``timeout``
        Seconds one ``send_message`` call may take (default 30).
    """

    def __init__(
        self, alias: str, *, queue_backend: str, kwargs: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> None:
        super().__init__(alias)
        try:
            target = import_string(queue_backend)
        except ImportError as exc:
            raise ModalkitImproperlyConfigured(f"Queue backend {alias!r}: cannot import {queue_backend}") from exc
        # A class has send_message too, unbound: make an instance of it, as of any factory.
        if isinstance(target, type) or not hasattr(target, "send_message"):
            if not callable(target):
                raise ModalkitImproperlyConfigured(f"Queue backend {alias!r}: {queue_backend} has no send_message")
            target = target(**(kwargs or {}))
        elif kwargs:
            raise ModalkitImproperlyConfigured(
                f"Queue backend {alias!r}: kwargs given, but {queue_backend} is an object, not a class or factory"
            )
        if not inspect.iscoroutinefunction(getattr(target, "send_message", None)):
            raise ModalkitImproperlyConfigured(
                f"Queue backend {alias!r}: {queue_backend} must provide `async def send_message(queue_name, message)`"
            )
        self.queue_backend: ModalKitQueueBackend = target
        self.timeout = timeout

    async def asend(self, message: QueueMessage) -> str:
        name = type(self.queue_backend).__name__
        try:
            async with asyncio.timeout(self.timeout):
                sent = await self.queue_backend.send_message(message.queue_name, message.body())
        except DeliveryError:
            raise  # the adaptee knows this app: PermanentDeliveryError stays permanent
        except TimeoutError as exc:
            raise DeliveryError(
                f"{name}.send_message took longer than {self.timeout}s", alias=self.alias, queue_name=message.queue_name
            ) from exc
        except Exception as exc:
            raise DeliveryError(
                f"{name}.send_message raised {type(exc).__name__}: {exc}",
                alias=self.alias,
                queue_name=message.queue_name,
            ) from exc
        # ModalKit reads any falsy answer as "not sent".
        if not sent:
            raise DeliveryError(
                f"{name}.send_message returned {sent!r}", alias=self.alias, queue_name=message.queue_name
            )
        return message.message_id
