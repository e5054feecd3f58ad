"""Request and response bodies of the API, single jobs and batches.

The request and job schemas are built for the configured pipeline, so OpenAPI
shows the model's own input and output types.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any

from ninja import Schema
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    create_model,
    field_validator,
    model_validator,
)

from ..jobs.scheduling import MAX_AHEAD, PriorityName, Schedule, priority_name
from ..models.states import DeliveryRoute, DeliveryStatus, JobStatus
from ..models.validation import json_problem

__all__ = [
    "AnyObject",
    "BatchAccepted",
    "BatchCounts",
    "BatchOut",
    "DeliveryOut",
    "ErrorOut",
    "JobAccepted",
    "JobError",
    "ScheduledRequest",
    "ServerErrorOut",
    "ValidationErrorOut",
    "async_request_schema",
    "batch_request_schema",
    "job_page_schema",
    "job_schema",
    "sync_request_schema",
]

# Text that reaches the database as a query parameter: no NUL characters.
NO_NUL = r"^[^\x00]*$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(name: str) -> str:
    # Queue names end up in logs, the admin and other systems' keys: no line breaks,
    # escapes or other control characters (which would also let a client forge log lines).
    if found := _CONTROL.search(name):
        raise ValueError(f"contains the control character {found.group()!r}; queue names are printable text")
    return name


QueueName = Annotated[
    str,
    AfterValidator(_printable),
    Field(default="", max_length=255, description="Where the result goes; empty: nowhere."),
]


class AnyObject(BaseModel):
    """A JSON object of any shape: the model's input and output while the pipeline is unknown."""

    model_config = ConfigDict(extra="allow")


class ErrorOut(Schema):
    detail: str


class ServerErrorOut(Schema):
    detail: str
    error_id: str = Field(description="Quote it to the service's operators: the log line has the details.")


class ValidationErrorOut(Schema):
    detail: list[dict[str, Any]] = Field(description="One entry per invalid field: its location and the problem.")


class JobAccepted(Schema):
    job_id: uuid.UUID
    status: JobStatus
    model_name: str
    created_at: dt.datetime


class JobError(Schema):
    type: str
    message: str


class DeliveryOut(Schema):
    route: DeliveryRoute
    queue_name: str
    backend: str
    message_id: str
    status: DeliveryStatus
    attempts: int
    last_error: str = Field(
        description='The last failed attempt: error class and HTTP status ("DeliveryError (HTTP 503)").'
    )
    next_attempt_at: dt.datetime | None
    sent_at: dt.datetime | None

    @field_validator("last_error", mode="after")
    @classmethod
    def _public(cls, value: str) -> str:
        """Only what precedes the first colon: the error's class and HTTP status. The rest
        may name a configured URL (with its token), other queues, or a provider's words;
        operators see it in the admin."""
        return value.split(":", 1)[0]


class _JobBase(Schema):
    job_id: uuid.UUID
    model_name: str
    status: JobStatus
    error: JobError | None
    meta: dict[str, Any]
    success_queue: str
    failure_queue: str
    attempts: int
    priority: PriorityName
    run_after: dt.datetime | None = Field(description="Not before: the request's run_after, or a retry's backoff.")
    expires_at: dt.datetime | None = Field(
        description="Expires unless started by then (deadline or ttl); null: the service's default timeout."
    )
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    deliveries: list[DeliveryOut]
    progress: float | None = Field(description="How far the running pipeline said it was, from 0 to 1.")
    progress_message: str = Field(description="What the pipeline said with its last progress.")
    partial_outputs: list[dict[str, Any]] | None = Field(
        description="What a streaming pipeline yielded so far in the job's current attempt, in order; "
        "GET /jobs/{id}/events streams them. Null in a page of jobs (see partial_output_count)."
    )
    partial_output_count: int = Field(description="How many partial outputs the current attempt has.")

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_name(cls, value: Any) -> Any:
        return priority_name(value) if isinstance(value, int) else value


class StrictSchema(Schema):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        """Refuse what the JSON columns cannot hold (NaN, Infinity, NUL) with a 422, not a 500."""
        problem = json_problem(value.model_dump() if isinstance(value, BaseModel) else value)
        if problem:
            raise ValueError(f"contains {problem}")
        return value


class ScheduledRequest(StrictSchema):
    """The scheduling fields of a request that queues jobs (see :mod:`.scheduling`)."""

    priority: PriorityName = Field(
        default="normal", description="Claimed ahead of queued jobs of lower priority, however many."
    )
    run_after: AwareDatetime | None = Field(
        default=None, description=f"Not before this time (with a time zone; at most {MAX_AHEAD.days} days ahead)."
    )
    deadline: AwareDatetime | None = Field(
        default=None, description="Expire, with a failure message, if not started by then. Not with ttl."
    )
    ttl: float | None = Field(
        default=None,
        gt=0,
        le=MAX_AHEAD.total_seconds(),
        description="Seconds to wait for a worker, from run_after or the submit; then as deadline. Not with deadline.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ScheduledRequest:
        self.schedule()  # its ValueError is the 422
        return self

    def schedule(self) -> Schedule:
        return Schedule(priority=self.priority, run_after=self.run_after, deadline=self.deadline, ttl=self.ttl)


def sync_request_schema(input_model: type[BaseModel]) -> type[Schema]:
    """ModalKit's ``SyncInputModel`` for this pipeline: unknown fields are rejected."""
    schema: type[Schema] = create_model("PredictRequest", __base__=StrictSchema, message=(input_model, ...))
    return schema


def async_request_schema(input_model: type[BaseModel]) -> type[Schema]:
    """ModalKit's ``AsyncInputModel`` for this pipeline: unknown fields are rejected."""
    schema: type[Schema] = create_model(
        "AsyncPredictRequest",
        __base__=ScheduledRequest,
        message=(input_model, ...),
        success_queue=(QueueName, ""),
        failure_queue=(QueueName, ""),
        meta=(dict[str, Any], Field(default_factory=dict)),
    )
    return schema


def job_schema(output_model: type[BaseModel]) -> type[Schema]:
    result_type: Any = output_model | None
    return create_model("Job", __base__=_JobBase, result=(result_type, None))


def job_page_schema(job: type[Schema]) -> type[Schema]:
    """A page of jobs; ``next`` is the ``before`` for the following page."""
    page: type[Schema] = create_model("JobPage", __base__=Schema, jobs=(list[job], ...), next=(uuid.UUID | None, None))  # type: ignore[valid-type]
    return page


# --- Batches (POST /async/predict/batch) ---------------------------------------------------
#
# An item is the single async request for the same pipeline, so each field a single submit
# takes, an item takes too; the batch adds shared defaults and the queue its completion
# message goes to.

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
        __base__=StrictSchema,
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
