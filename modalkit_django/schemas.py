"""Request and response bodies of the API.

The request and job schemas are built for the configured pipeline, so OpenAPI
shows the model's own input and output types.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from ninja import Schema
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from .validators import json_problem

__all__ = [
    "AnyObject",
    "DeliveryOut",
    "ErrorOut",
    "JobAccepted",
    "JobError",
    "async_request_schema",
    "job_page_schema",
    "job_schema",
    "sync_request_schema",
]

QueueName = Field(default="", max_length=255, description="Where the result goes; empty: nowhere.")
# Text that reaches the database as a query parameter: no NUL characters.
NO_NUL = r"^[^\x00]*$"


class AnyObject(BaseModel):
    """A JSON object of any shape: the model's input and output while the pipeline is unknown."""

    model_config = ConfigDict(extra="allow")


class ErrorOut(Schema):
    detail: str


class JobAccepted(Schema):
    job_id: uuid.UUID
    status: str
    model_name: str
    created_at: dt.datetime


class JobError(Schema):
    type: str
    message: str


class DeliveryOut(Schema):
    route: str
    queue_name: str
    backend: str
    message_id: str
    status: str
    attempts: int
    last_error: str
    next_attempt_at: dt.datetime | None
    sent_at: dt.datetime | None


class _JobBase(Schema):
    job_id: uuid.UUID
    model_name: str
    status: str
    error: JobError | None
    meta: dict[str, Any]
    success_queue: str
    failure_queue: str
    attempts: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    deliveries: list[DeliveryOut]


class _StrictSchema(Schema):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        """Refuse what the JSON columns cannot hold (NaN, Infinity, NUL) with a 422, not a 500."""
        problem = json_problem(value.model_dump() if isinstance(value, BaseModel) else value)
        if problem:
            raise ValueError(f"contains {problem}")
        return value


def sync_request_schema(input_model: type[BaseModel]) -> type[Schema]:
    """ModalKit's ``SyncInputModel`` for this pipeline: unknown fields are rejected."""
    schema: type[Schema] = create_model("PredictRequest", __base__=_StrictSchema, message=(input_model, ...))
    return schema


def async_request_schema(input_model: type[BaseModel]) -> type[Schema]:
    """ModalKit's ``AsyncInputModel`` for this pipeline: unknown fields are rejected."""
    schema: type[Schema] = create_model(
        "AsyncPredictRequest",
        __base__=_StrictSchema,
        message=(input_model, ...),
        success_queue=(str, QueueName),
        failure_queue=(str, QueueName),
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
