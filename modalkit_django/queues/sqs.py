"""A queue backend for Amazon SQS, through boto3.

::

    MODALKIT["QUEUES"]["sqs"] = {
        "BACKEND": "modalkit_django.queues.sqs.SQSBackend",
        "OPTIONS": {"region_name": "eu-west-1"},   # credentials: boto3's usual chain
    }

The queue name is the SQS queue's name; its URL is looked up once and cached. A name
ending in ``.fifo`` is a FIFO queue: each message goes in its job's message group, with
the delivery's stable ``message_id`` as the deduplication id, so a retry after a lost
response is dropped by SQS. Every message carries the message attributes ``job_id``,
``route`` and ``message_id``. Messages for the same queue sent together go out with
``SendMessageBatch``, ten per call.

boto3 is synchronous: calls run in a thread (``asyncio.to_thread``) on one client per
backend (boto3 clients are thread-safe), with short timeouts so that an unreachable
endpoint fails the attempt in seconds and the delivery's own backoff takes over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from ..exceptions import DeliveryError, PermanentDeliveryError
from .base import BatchQueueBackend, QueueMessage

__all__ = ["SQSBackend"]

logger = logging.getLogger(__name__)

BATCH_SIZE = 10  # SendMessageBatch's limit
# SQS's limit on a message: its body and attributes together (1 MiB since August 2025).
MAX_MESSAGE_BYTES = 1_048_576

# Error codes a retry cannot fix: the request itself is wrong. (SQS's JSON protocol
# reports some under two names: "Code" and the older "QueryErrorCode".)
_NON_EXISTENT_QUEUE = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
_PERMANENT_CODES = _NON_EXISTENT_QUEUE | {
    "InvalidParameterValue",
    "InvalidParameterValueException",
    "MissingParameter",
    "MissingRequiredParameterException",
    "InvalidMessageContents",
    "InvalidAttributeName",
    "InvalidAttributeValue",
    "InvalidAddress",
    "UnsupportedOperation",
    "AWS.SimpleQueueService.UnsupportedOperation",
}
_BATCH_TOO_LONG = frozenset({"AWS.SimpleQueueService.BatchRequestTooLong", "BatchRequestTooLong"})


class SQSBackend(BatchQueueBackend):
    """Sends each message to the SQS queue of its queue name.

    Options (credentials default to boto3's chain: environment, profile, instance role):

    ``region_name``, ``endpoint_url``
        Where SQS is (``endpoint_url`` for a local or VPC endpoint).
    ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``, ``profile_name``
        Explicit credentials, if not from the chain.
    ``create_missing``
        Create a queue that does not exist (default off: the delivery is dead instead).
        Queue names come from API clients, so leave it off unless any name is fine.
    ``queue_attributes``
        Attributes for the queues it creates, e.g. ``{"MessageRetentionPeriod": "86400"}``.
    ``connect_timeout``, ``read_timeout``
        Seconds (defaults 2 and 5).
    ``max_attempts``
        Attempts per API call inside boto3, the first included (default 2); the
        delivery's own retries come on top.
    """

    def __init__(
        self,
        alias: str,
        *,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        profile_name: str | None = None,
        create_missing: bool = False,
        queue_attributes: dict[str, str] | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_attempts: int = 2,
    ) -> None:
        super().__init__(alias)
        self.create_missing = create_missing
        self.queue_attributes = dict(queue_attributes or {})
        self._session_options: dict[str, Any] = {
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token,
            "profile_name": profile_name,
        }
        self._client_options: dict[str, Any] = {
            "region_name": region_name,
            "endpoint_url": endpoint_url,
            "config": Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"total_max_attempts": max_attempts, "mode": "standard"},
            ),
        }
        self._client: Any = None
        self._lock = threading.Lock()
        self._queue_urls: dict[str, str] = {}

    @property
    def client(self) -> Any:
        """The boto3 SQS client, made on first use (it reads credentials and config files)."""
        with self._lock:
            if self._client is None:
                session = boto3.session.Session(**self._session_options)
                self._client = session.client("sqs", **self._client_options)
            return self._client

    async def asend_many(self, messages: Sequence[QueueMessage]) -> list[str | BaseException]:
        by_queue: defaultdict[str, list[int]] = defaultdict(list)
        for index, message in enumerate(messages):
            by_queue[message.queue_name].append(index)
        outcomes: dict[int, str | BaseException] = {}

        async def send_queue(queue_name: str, indexes: list[int]) -> None:
            results = await asyncio.to_thread(self._send_to_queue, queue_name, [messages[i] for i in indexes])
            outcomes.update(zip(indexes, results, strict=True))

        # One thread per queue; the queues' batches go out side by side.
        await asyncio.gather(*(send_queue(name, indexes) for name, indexes in by_queue.items()))
        return [outcomes[index] for index in range(len(messages))]

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- In a worker thread ----------------------------------------------------------

    def _send_to_queue(self, queue_name: str, messages: list[QueueMessage]) -> list[str | BaseException]:
        try:
            url = self._queue_url(queue_name)
        except (BotoCoreError, ClientError) as exc:
            return [self._error(exc, queue_name)] * len(messages)
        results: dict[int, str | BaseException] = {}
        fitting = []
        for index, message in enumerate(messages):
            if (size := _size(message)) > MAX_MESSAGE_BYTES:
                results[index] = PermanentDeliveryError(
                    _too_big(message, size), alias=self.alias, queue_name=queue_name
                )
            else:
                fitting.append(index)
        for start in range(0, len(fitting), BATCH_SIZE):
            chunk = fitting[start : start + BATCH_SIZE]
            results.update(zip(chunk, self._send_chunk(url, queue_name, [messages[i] for i in chunk]), strict=True))
        return [results[index] for index in range(len(messages))]

    def _queue_url(self, queue_name: str) -> str:
        url = self._queue_urls.get(queue_name)
        if url is not None:
            return url
        try:
            url = str(self.client.get_queue_url(QueueName=queue_name)["QueueUrl"])
        except ClientError as exc:
            if not (self.create_missing and _codes(exc) & _NON_EXISTENT_QUEUE):
                raise
            attributes = {**self.queue_attributes, **({"FifoQueue": "true"} if _is_fifo(queue_name) else {})}
            url = str(self.client.create_queue(QueueName=queue_name, Attributes=attributes)["QueueUrl"])
            logger.info("Created SQS queue %s", queue_name)
        self._queue_urls[queue_name] = url
        return url

    def _send_chunk(self, url: str, queue_name: str, chunk: list[QueueMessage]) -> list[str | BaseException]:
        try:
            if len(chunk) == 1:
                response = self.client.send_message(QueueUrl=url, **self._entry(chunk[0]))
                return [response["MessageId"]]
            entries = [{"Id": str(index), **self._entry(message)} for index, message in enumerate(chunk)]
            response = self.client.send_message_batch(QueueUrl=url, Entries=entries)
        except ClientError as exc:
            if len(chunk) > 1 and _codes(exc) & _BATCH_TOO_LONG:
                # Together over SQS's size limit: each alone may still fit.
                return [result for message in chunk for result in self._send_chunk(url, queue_name, [message])]
            return [self._error(exc, queue_name)] * len(chunk)
        except BotoCoreError as exc:
            return [self._error(exc, queue_name)] * len(chunk)
        results: dict[str, str | BaseException] = {
            entry["Id"]: entry["MessageId"] for entry in response.get("Successful", [])
        }
        for entry in response.get("Failed", []):
            text = f"SQS {queue_name!r}: {entry.get('Code')}: {entry.get('Message', '')}"
            permanent = entry.get("SenderFault") or entry.get("Code") in _PERMANENT_CODES
            error_class = PermanentDeliveryError if permanent else DeliveryError
            results[entry["Id"]] = error_class(text, alias=self.alias, queue_name=queue_name)
        return [
            results.get(str(index)) or DeliveryError(f"SQS {queue_name!r}: no result for this entry", alias=self.alias)
            for index in range(len(chunk))
        ]

    def _entry(self, message: QueueMessage) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "MessageBody": message.body(),
            "MessageAttributes": {
                name: {"DataType": "String", "StringValue": value} for name, value in _attributes(message)
            },
        }
        if _is_fifo(message.queue_name):
            entry["MessageGroupId"] = message.job_id
            entry["MessageDeduplicationId"] = message.message_id
        return entry

    def _error(self, exc: BotoCoreError | ClientError, queue_name: str) -> DeliveryError:
        codes = _codes(exc) if isinstance(exc, ClientError) else set()
        if codes & _NON_EXISTENT_QUEUE:
            # The queue was deleted since its URL was cached: look it up (or create it) again next time.
            self._queue_urls.pop(queue_name, None)
        permanent = bool(codes & _PERMANENT_CODES) and not (self.create_missing and codes & _NON_EXISTENT_QUEUE)
        error_class = PermanentDeliveryError if permanent else DeliveryError
        error = error_class(f"SQS {queue_name!r}: {exc}", alias=self.alias, queue_name=queue_name)
        error.__cause__ = exc
        return error


def _size(message: QueueMessage) -> int:
    """What SQS counts against its limit: the body, and each attribute's name, type and value."""
    attributes = sum(len(name) + len("String") + len(value) for name, value in _attributes(message))
    return len(message.body().encode()) + attributes


def _attributes(message: QueueMessage) -> list[tuple[str, str]]:
    return [("job_id", message.job_id), ("route", message.route), ("message_id", message.message_id)]


def _too_big(message: QueueMessage, size: int) -> str:
    """Why SQS will never take ``message``, and what makes it that big."""
    text = f"The message is {size:,} bytes, over SQS's limit of {MAX_MESSAGE_BYTES:,}"
    request = message.payload.get("original_message")
    if request is not None:
        text += (
            f"; as a failure message it carries the request that failed (original_message, "
            f"{len(json.dumps(request)):,} bytes): send failures of large requests to a queue without this "
            "limit (Redis, a webhook), or keep requests under it"
        )
    return text + "."


def _codes(exc: ClientError) -> set[str]:
    error = exc.response.get("Error", {})
    return {str(code) for code in (error.get("Code"), error.get("QueryErrorCode")) if code}


def _is_fifo(queue_name: str) -> bool:
    return queue_name.endswith(".fifo")
