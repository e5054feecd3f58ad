"""Every error modalkit-django raises on purpose.

::

    ModalkitError                       base, not raised directly
    ├── ModalkitImproperlyConfigured    also a django ImproperlyConfigured
    ├── UnknownModel                    model_name is not in model_entries        → 404
    ├── JobNotFound                     no such job for this owner                → 404
    ├── BatchNotFound                   no such batch for this owner              → 404
    ├── InvalidJobState                 e.g. cancelling a finished job            → 409
    ├── IdempotencyConflict             a reused Idempotency-Key, another request → 409
    ├── InferenceError                  the model did not produce an output
    │   ├── PipelineError               the pipeline raised for this input (final)
    │   ├── InferenceNotDeployed        the Modal class cannot be found           → 502
    │   ├── InferenceAuthError          Modal refused the credentials             → 502
    │   ├── InferenceUnavailable        connection / service failure (transient)  → 503
    │   ├── InferenceTimeout            no answer before the deadline             → 504
    │   └── InferenceCallLost           a detached call is gone (expired, unknown, cancelled)
    └── DeliveryError                   a queue backend did not take a message
        └── PermanentDeliveryError      it never will: do not retry

A transient error (``retryable = True``) sends a job back to the queue with backoff;
any other inference error fails the job at once.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "BatchNotFound",
    "DeliveryError",
    "IdempotencyConflict",
    "InferenceAuthError",
    "InferenceCallLost",
    "InferenceError",
    "InferenceNotDeployed",
    "InferenceTimeout",
    "InferenceUnavailable",
    "InvalidJobState",
    "JobNotFound",
    "ModalkitError",
    "ModalkitImproperlyConfigured",
    "PermanentDeliveryError",
    "PipelineError",
    "UnknownModel",
]


class ModalkitError(Exception):
    """Base of the tree; catch it, do not raise it."""


class ModalkitImproperlyConfigured(ModalkitError, ImproperlyConfigured):
    """The ``MODALKIT`` setting or ``modalkit.yaml`` cannot be used."""


class UnknownModel(ModalkitError):
    def __init__(self, model_name: str, available: list[str]) -> None:
        self.model_name = model_name
        self.available = available
        names = ", ".join(available) or "none configured"
        super().__init__(f"Unknown model {model_name!r}; available: {names}")


class JobNotFound(ModalkitError):
    def __init__(self, job_id: object) -> None:
        self.job_id = job_id
        super().__init__(f"Job {job_id} not found")


class InvalidJobState(ModalkitError):
    def __init__(self, job_id: object, status: str, action: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"Cannot {action} job {job_id}: it is {status}")


class BatchNotFound(ModalkitError):
    def __init__(self, batch_id: object) -> None:
        self.batch_id = batch_id
        super().__init__(f"Batch {batch_id} not found")


class IdempotencyConflict(ModalkitError):
    def __init__(self, key: str, job_id: object, *, what: str = "job") -> None:
        self.key = key
        self.job_id = job_id
        super().__init__(
            f"Idempotency-Key {key!r} was used for {what} {job_id} with a different request; use a new key"
        )


class InferenceError(ModalkitError):
    """The model produced no output. ``error_type`` names the original error."""

    retryable = False

    def __init__(self, message: str, *, error_type: str | None = None, output: dict[str, Any] | None = None) -> None:
        # Stored as JSON: PostgreSQL refuses a NUL character there.
        message = message.replace("\x00", "\\x00")
        super().__init__(message)
        self.message = message
        self.error_type = error_type or type(self).__name__
        # The pipeline's own output when it reported the failure (a status other than
        # "success"): ModalKit sends that output, whole, to the failure queue.
        self.output = output

    def as_dict(self) -> dict[str, Any]:
        described: dict[str, Any] = {"type": self.error_type, "message": self.message}
        return described if self.output is None else {**described, "output": self.output}


class PipelineError(InferenceError):
    """The pipeline raised (or reported an error) for this input."""


class InferenceNotDeployed(InferenceError):
    pass


class InferenceAuthError(InferenceError):
    pass


class InferenceUnavailable(InferenceError):
    retryable = True


class InferenceTimeout(InferenceError):
    """Not retried: a model that ran out of time once will likely do so again."""


class InferenceCallLost(InferenceError):
    """A detached call (see ``clients.base.DetachedCalls``) has no output to give: its
    output expired, Modal does not know it, or it ended without one. Starting it again
    is safe."""

    retryable = True


class DeliveryError(ModalkitError):
    """A backend failed to send; the delivery will be retried."""

    def __init__(self, message: str, *, alias: str = "", queue_name: str = "", status_code: int | None = None) -> None:
        super().__init__(message)
        self.alias = alias
        self.queue_name = queue_name
        # The receiver's HTTP status, when it answered one: the part of the error an API
        # client may see (the message may name a configured URL).
        self.status_code = status_code


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help (e.g. the receiver answered 400); the delivery is dead."""
