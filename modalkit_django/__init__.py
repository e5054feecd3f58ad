"""modalkit-django: a durable job service in front of a Modal inference class.

What a host project may use, importable from here (``from modalkit_django import submit_job``):

- the use cases: submit, read, cancel, re-run and redeliver jobs and batches, issue API keys;
- the models and their statuses, for queries of your own;
- the exceptions (:class:`ModalkitError` and its tree);
- the extension points: :class:`InferencePipeline` (your model), :class:`InferenceBackend`
  (where it runs), :class:`BaseQueueBackend` (where results go) and :func:`verify_webhook`
  (for the receiver of a signed webhook).

Names are loaded on first use (PEP 562): importing this package costs nothing, and the
models are only touched once Django's apps are ready. Every other module is internal, even
where it is importable; the dotted paths that settings name (``queues.*``, ``clients.*``,
``inference.*``, ``urls``, ``health.urls``, ``metrics.urls``, ``asgi``, ``serve``) are public too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0.dev0"

# Public name → the module that defines it.
_EXPORTS = {
    # Use cases
    "submit_job": "modalkit_django.jobs.submit",
    "asubmit_job": "modalkit_django.api.intake",
    "submit_batch": "modalkit_django.jobs.batches",
    "get_job": "modalkit_django.jobs.queries",
    "list_jobs": "modalkit_django.jobs.queries",
    "get_batch": "modalkit_django.jobs.batches",
    "list_batch_jobs": "modalkit_django.jobs.batches",
    "cancel_job": "modalkit_django.jobs.control",
    "cancel_jobs": "modalkit_django.jobs.control",
    "rerun_job": "modalkit_django.jobs.control",
    "rerun_jobs": "modalkit_django.jobs.control",
    "redeliver": "modalkit_django.jobs.control",
    "redeliver_deliveries": "modalkit_django.jobs.control",
    "create_api_key": "modalkit_django.jobs.keys",
    "BulkResult": "modalkit_django.jobs.control",
    "SubmittedBatch": "modalkit_django.jobs.batches",
    "BatchStatus": "modalkit_django.jobs.batches",
    "Schedule": "modalkit_django.jobs.scheduling",
    # Models and statuses
    "Job": "modalkit_django.models",
    "QueueDelivery": "modalkit_django.models",
    "Batch": "modalkit_django.models",
    "ApiKey": "modalkit_django.models",
    "WorkerHeartbeat": "modalkit_django.models",
    "JobStatus": "modalkit_django.models.states",
    "JobPriority": "modalkit_django.models.states",
    "DeliveryStatus": "modalkit_django.models.states",
    "DeliveryRoute": "modalkit_django.models.states",
    # Exceptions
    "ModalkitError": "modalkit_django.exceptions",
    "ModalkitImproperlyConfigured": "modalkit_django.exceptions",
    "UnknownModel": "modalkit_django.exceptions",
    "JobNotFound": "modalkit_django.exceptions",
    "BatchNotFound": "modalkit_django.exceptions",
    "InvalidJobState": "modalkit_django.exceptions",
    "IdempotencyConflict": "modalkit_django.exceptions",
    "InferenceError": "modalkit_django.exceptions",
    "PipelineError": "modalkit_django.exceptions",
    "InferenceNotDeployed": "modalkit_django.exceptions",
    "InferenceAuthError": "modalkit_django.exceptions",
    "InferenceUnavailable": "modalkit_django.exceptions",
    "InferenceTimeout": "modalkit_django.exceptions",
    "InferenceCallLost": "modalkit_django.exceptions",
    "DeliveryError": "modalkit_django.exceptions",
    "PermanentDeliveryError": "modalkit_django.exceptions",
    # Extension points
    "InferencePipeline": "modalkit_django.inference.pipeline",
    "InferenceOutputModel": "modalkit_django.inference.pipeline",
    "InferenceBackend": "modalkit_django.clients.base",
    "BaseQueueBackend": "modalkit_django.queues.base",
    "BatchQueueBackend": "modalkit_django.queues.base",
    "QueueMessage": "modalkit_django.queues.base",
    "WebhookVerificationError": "modalkit_django.webhooks",
}
# Public names bound to another name where they are defined.
_RENAMED = {"verify_webhook": ("modalkit_django.webhooks", "verify")}

# Literal, for type checkers and linters; tests/test_public_api.py holds it to _EXPORTS.
__all__ = [
    "ApiKey",
    "BaseQueueBackend",
    "Batch",
    "BatchNotFound",
    "BatchQueueBackend",
    "BatchStatus",
    "BulkResult",
    "DeliveryError",
    "DeliveryRoute",
    "DeliveryStatus",
    "IdempotencyConflict",
    "InferenceAuthError",
    "InferenceBackend",
    "InferenceCallLost",
    "InferenceError",
    "InferenceNotDeployed",
    "InferenceOutputModel",
    "InferencePipeline",
    "InferenceTimeout",
    "InferenceUnavailable",
    "InvalidJobState",
    "Job",
    "JobNotFound",
    "JobPriority",
    "JobStatus",
    "ModalkitError",
    "ModalkitImproperlyConfigured",
    "PermanentDeliveryError",
    "PipelineError",
    "QueueDelivery",
    "QueueMessage",
    "Schedule",
    "SubmittedBatch",
    "UnknownModel",
    "WebhookVerificationError",
    "WorkerHeartbeat",
    "__version__",
    "asubmit_job",
    "cancel_job",
    "cancel_jobs",
    "create_api_key",
    "get_batch",
    "get_job",
    "list_batch_jobs",
    "list_jobs",
    "redeliver",
    "redeliver_deliveries",
    "rerun_job",
    "rerun_jobs",
    "submit_batch",
    "submit_job",
    "verify_webhook",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name], name
    elif name in _RENAMED:
        module, attribute = _RENAMED[name]
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .api.intake import asubmit_job
    from .clients.base import InferenceBackend
    from .exceptions import (
        BatchNotFound,
        DeliveryError,
        IdempotencyConflict,
        InferenceAuthError,
        InferenceCallLost,
        InferenceError,
        InferenceNotDeployed,
        InferenceTimeout,
        InferenceUnavailable,
        InvalidJobState,
        JobNotFound,
        ModalkitError,
        ModalkitImproperlyConfigured,
        PermanentDeliveryError,
        PipelineError,
        UnknownModel,
    )
    from .inference.pipeline import InferenceOutputModel, InferencePipeline
    from .jobs.batches import BatchStatus, SubmittedBatch, get_batch, list_batch_jobs, submit_batch
    from .jobs.control import (
        BulkResult,
        cancel_job,
        cancel_jobs,
        redeliver,
        redeliver_deliveries,
        rerun_job,
        rerun_jobs,
    )
    from .jobs.keys import create_api_key
    from .jobs.queries import get_job, list_jobs
    from .jobs.scheduling import Schedule
    from .jobs.submit import submit_job
    from .models import ApiKey, Batch, Job, QueueDelivery, WorkerHeartbeat
    from .models.states import DeliveryRoute, DeliveryStatus, JobPriority, JobStatus
    from .queues.base import BaseQueueBackend, BatchQueueBackend, QueueMessage
    from .webhooks import WebhookVerificationError
    from .webhooks import verify as verify_webhook
