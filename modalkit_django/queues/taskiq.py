"""A queue backend that hands each message to a TaskIQ task of yours, run by the same workers.

Register a consumer per queue name, in a module listed in ``MODALKIT["TASK_MODULES"]``
(or given to ``manage.py taskiq worker`` as an argument)::

    from modalkit_django.queues.taskiq import consumer

    @consumer("sentiment_results")
    async def handle_results(message: dict) -> None:
        ...

and route queue names to the backend::

    MODALKIT["QUEUES"]["taskiq"] = {"BACKEND": "modalkit_django.queues.taskiq.TaskiqBackend"}
    MODALKIT["QUEUE_ROUTES"] = [("sentiment_*", "taskiq")]

The consumer receives the message payload (a dict). The TaskIQ message's ``task_id``
is the delivery's stable ``message_id``, and its labels carry ``modalkit_message_id``,
``modalkit_job_id`` and ``modalkit_route``. A message is sent once its broker has it;
what the consumer then does is TaskIQ's business (its retry middleware, for one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from django.utils.module_loading import import_string
from taskiq import AsyncBroker
from taskiq.brokers.shared_broker import async_shared_broker
from taskiq.decor import AsyncTaskiqDecoratedTask
from taskiq.exceptions import SendTaskError

from ..conf import import_task_modules
from ..exceptions import DeliveryError, ModalkitImproperlyConfigured, PermanentDeliveryError
from .base import BaseQueueBackend, QueueMessage

__all__ = ["TaskiqBackend", "consumer", "consumers"]

TASK_NAME_PREFIX = "modalkit.consumer:"

_consumers: dict[str, AsyncTaskiqDecoratedTask[Any, Any]] = {}


def consumer(queue_name: str, **labels: Any) -> Callable[[Callable[..., Any]], AsyncTaskiqDecoratedTask[Any, Any]]:
    """Register the decorated function as the TaskIQ task for messages sent to ``queue_name``.

    ``labels`` are TaskIQ task labels (e.g. ``retry_on_error=True`` for its retry
    middleware). The function stays a TaskIQ task: ``.kiq()`` works as usual.
    """

    def register(function: Callable[..., Any]) -> AsyncTaskiqDecoratedTask[Any, Any]:
        existing = _consumers.get(queue_name)
        # The same function registered again (its module reloaded) replaces itself.
        if existing is not None and _qualified_name(existing.original_func) != _qualified_name(function):
            raise ModalkitImproperlyConfigured(
                f"Queue {queue_name!r} already has a TaskIQ consumer: {_qualified_name(existing.original_func)}"
            )
        task: AsyncTaskiqDecoratedTask[Any, Any] = async_shared_broker.task(
            task_name=TASK_NAME_PREFIX + queue_name, **labels
        )(function)
        _consumers[queue_name] = task
        return task

    return register


def consumers() -> dict[str, AsyncTaskiqDecoratedTask[Any, Any]]:
    """The registered consumers by queue name."""
    return dict(_consumers)


class TaskiqBackend(BaseQueueBackend):
    """Sends each message to the :func:`consumer` registered for its queue name.

    Options:

    ``timeout``
        Seconds to hand a message to the broker (default 10).
    ``broker``
        Dotted path of a function returning the TaskIQ broker to send through (default
        ``modalkit_django.broker.get_broker``, the workers' own).

    A queue name without a consumer is a :class:`PermanentDeliveryError`.
    """

    def __init__(self, alias: str, *, timeout: float = 10.0, broker: str = "modalkit_django.broker.get_broker") -> None:
        super().__init__(alias)
        self.timeout = timeout
        self.broker_factory = broker
        self._modules_imported = False

    def get_broker(self) -> AsyncBroker:
        factory: Callable[[], AsyncBroker] = import_string(self.broker_factory)
        return factory()

    async def asend(self, message: QueueMessage) -> str:
        if not self._modules_imported:
            # Whatever process sends must know the consumers, not only the workers.
            import_task_modules()
            self._modules_imported = True
        task = _consumers.get(message.queue_name)
        if task is None:
            registered = ", ".join(sorted(_consumers)) or "none"
            raise PermanentDeliveryError(
                f"No TaskIQ consumer for queue {message.queue_name!r} (registered: {registered}); "
                f"decorate one with @consumer({message.queue_name!r}) in a module of MODALKIT['TASK_MODULES']",
                alias=self.alias,
                queue_name=message.queue_name,
            )
        kicker = task.kicker().with_broker(self.get_broker()).with_task_id(message.message_id)
        # Not with_labels(): TaskIQ's kicker shares its labels dict with the task, so
        # updating it would leak this message's labels into every later send.
        kicker.labels = {
            **kicker.labels,
            "modalkit_message_id": message.message_id,
            "modalkit_job_id": message.job_id,
            "modalkit_route": message.route,
        }
        try:
            async with asyncio.timeout(self.timeout):
                await kicker.kiq(message.payload)
        except TimeoutError as exc:
            raise DeliveryError(
                f"TaskIQ broker did not take the message for {task.task_name} within {self.timeout}s",
                alias=self.alias,
                queue_name=message.queue_name,
            ) from exc
        except SendTaskError as exc:
            raise DeliveryError(
                f"TaskIQ could not send to {task.task_name}: {exc.__cause__ or exc}",
                alias=self.alias,
                queue_name=message.queue_name,
            ) from exc
        return message.message_id


def _qualified_name(function: Callable[..., Any]) -> str:
    return f"{function.__module__}.{function.__qualname__}"
