"""TaskIQ consumers for the queue tests, registered as a project would register its own.

Each one pushes a report of what it received onto the Redis list named in the
message's ``meta["reply_to"]``, so a test reads it back whichever process ran it.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import redis.asyncio
from django.conf import settings
from taskiq import Context, TaskiqDepends

from modalkit_django.queues.taskiq import consumer


@consumer("ml_results")
async def record_ml_results(message: dict[str, Any], context: Annotated[Context, TaskiqDepends()]) -> None:
    await _report(message, context)


@consumer("ml_errors")
async def record_ml_errors(message: dict[str, Any], context: Annotated[Context, TaskiqDepends()]) -> None:
    await _report(message, context)


async def _report(message: dict[str, Any], context: Context) -> None:
    report = {
        "message": message,
        "task_id": context.message.task_id,
        "labels": context.message.labels,
        "pid": os.getpid(),
    }
    async with redis.asyncio.Redis.from_url(settings.REDIS_URL, socket_timeout=5) as client:
        await client.rpush(message["meta"]["reply_to"], json.dumps(report))
