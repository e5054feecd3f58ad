"""The declared public API: exactly these names, importable from ``modalkit_django``, lazily.

A name added to or removed from ``__all__`` is a change to the contract with host
projects: it must change here too, with a CHANGELOG entry.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import modalkit_django

from .conftest import ROOT

PUBLIC = [
    "__version__",
    # Use cases
    "submit_job", "asubmit_job", "submit_batch", "get_job", "list_jobs", "get_batch", "list_batch_jobs",
    "cancel_job", "cancel_jobs", "rerun_job", "rerun_jobs", "redeliver", "redeliver_deliveries", "create_api_key",
    "BulkResult", "SubmittedBatch", "BatchStatus", "Schedule",
    # Models and statuses
    "Job", "QueueDelivery", "Batch", "ApiKey", "WorkerHeartbeat",
    "JobStatus", "JobPriority", "DeliveryStatus", "DeliveryRoute",
    # Exceptions
    "ModalkitError", "ModalkitImproperlyConfigured", "UnknownModel", "JobNotFound", "BatchNotFound",
    "InvalidJobState", "IdempotencyConflict", "InferenceError", "PipelineError", "InferenceNotDeployed",
    "InferenceAuthError", "InferenceUnavailable", "InferenceTimeout", "InferenceCallLost", "DeliveryError",
    "PermanentDeliveryError",
    # Extension points
    "InferencePipeline", "InferenceOutputModel", "InferenceBackend", "BaseQueueBackend", "BatchQueueBackend",
    "QueueMessage", "verify_webhook", "WebhookVerificationError",
]  # fmt: skip


def test_all_is_exactly_the_declared_api() -> None:
    assert sorted(modalkit_django.__all__) == sorted(PUBLIC)
    assert len(set(modalkit_django.__all__)) == len(modalkit_django.__all__)
    assert sorted(dir(modalkit_django)) == sorted(PUBLIC)


@pytest.mark.parametrize("name", [name for name in PUBLIC if name != "__version__"])
def test_each_public_name_is_the_object_its_module_defines(name: str) -> None:
    value = getattr(modalkit_django, name)
    assert value is not None
    # The same object wherever it is reached: callers of either path share one class.
    assert getattr(modalkit_django, name) is value
    if isinstance(value, type) and name not in {"verify_webhook"}:
        assert value.__name__ == name


def test_verify_webhook_is_the_webhooks_verify() -> None:
    from modalkit_django import webhooks

    assert modalkit_django.verify_webhook is webhooks.verify


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'services'"):
        modalkit_django.services  # noqa: B018  # the 0.1 module: internal now (CHANGELOG)


def test_importing_the_package_loads_nothing_else() -> None:
    """Lazy (PEP 562): ``import modalkit_django`` before Django is set up is safe and cheap."""
    code = (
        "import sys, modalkit_django\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('modalkit_django.', 'django')))\n"
        "print(loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
