"""Request and response bodies of the batch endpoints.

An item is the single async request (:func:`~modalkit_django.schemas.async_request_schema`)
for the same pipeline, so each field a single submit takes, an item takes too; the
batch adds shared defaults and the queue its completion message goes to.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from ninja import Schema
from pydantic import BaseModel, Field, create_model

from .schemas import DeliveryOut, QueueName, _StrictSchema, async_request_schema

__all__ = ["BatchAccepted", "BatchCounts", "BatchOut", "batch_request_schema"]

ITEMS_DESCRIPTION = (
    "The jobs, each a single async request; at most `MODALKIT['API']['MAX_BATCH_ITEMS']` (default 1000). "
    "An item without `success_queue` or `failure_queue` takes the batch's; its `meta` is laid over the batch's."
)

CompletionQueue = Annotated[
    QueueName, Field(description="Where one message goes once every job finished; empty: nowhere.")
]


def batch_request_schema(input_model: type[BaseModel]) -> type[Schema]:
    """``POST /async/predict/batch``'s body for this pipeline: unknown fields are rejected."""
    single = async_request_schema(input_model)
    item: type[Schema] = create_model("AsyncPredictBatchItem", __base__=single)
    schema: type[Schema] = create_model(
        "AsyncPredictBatchRequest",
        __base__=_StrictSchema,
        items=(list[item], Field(..., min_length=1, description=ITEMS_DESCRIPTION)),  # type: ignore[valid-type]
        success_queue=(QueueName, ""),
        failure_queue=(QueueName, ""),
        meta=(dict[str, Any], Field(default_factory=dict, description="Shared by every item.")),
        completion_queue=(CompletionQueue, ""),
    )
    return schema


class BatchAccepted(Schema):
    batch_id: uuid.UUID
    model_name: str
    size: int
    created_at: dt.datetime
    job_ids: list[uuid.UUID] = Field(description="One per item, in the request's order.")


class BatchCounts(Schema):
    """How many of the batch's jobs are in each status."""

    queued: int
    running: int
    succeeded: int
    failed: int
    canceled: int
    expired: int


class BatchOut(Schema):
    batch_id: uuid.UUID
    model_name: str
    size: int
    counts: BatchCounts
    done: bool = Field(description="True once every job finished (succeeded, failed, canceled or expired).")
    meta: dict[str, Any]
    completion_queue: str
    created_at: dt.datetime
    completed_at: dt.datetime | None = Field(description="When its last job finished; null until then.")
    completion: DeliveryOut | None = Field(description="The completion message, once made (needs completion_queue).")
    job_ids: list[uuid.UUID] = Field(description="In the request's order; GET /jobs/{job_id} for each one's result.")
