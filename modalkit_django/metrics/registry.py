"""The instruments (made once per process, on first use) and the registry a scrape reads.

``prometheus_client`` is imported here only, and only when metrics are on, so the core
works without it. Multi-process mode is prometheus_client's own: with
``PROMETHEUS_MULTIPROC_DIR`` set (before the process starts) every process writes its
counters and histograms to files in that directory, and a scrape aggregates them all.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..exceptions import ModalkitImproperlyConfigured

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["Instruments", "instruments", "scrape_registry"]

# Seconds. Waits and totals span a busy queue's minutes; inference spans a local model's
# milliseconds to a cold GPU's minutes.
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
INFERENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ModalkitImproperlyConfigured(
            "MODALKIT['METRICS']['ENABLED'] needs prometheus-client: pip install \"modalkit-django[metrics]\""
        ) from exc
    return prometheus_client


@dataclass(frozen=True)
class Instruments:
    submitted: Any
    finished: Any
    wait: Any
    inference: Any
    total: Any
    deliveries: Any
    modal_errors: Any
    sweep_actions: Any


@functools.cache
def instruments() -> Instruments:
    """This process's counters and histograms, in prometheus_client's default registry."""
    client = _client()
    counter, histogram = client.Counter, client.Histogram
    return Instruments(
        submitted=counter("modalkit_jobs_submitted", "Jobs stored by a submit.", ["model"]),
        finished=counter(
            "modalkit_jobs_finished",
            "Job runs a worker ended (succeeded, failed, retried).",
            ["model", "status"],
        ),
        wait=histogram(
            "modalkit_job_wait_seconds", "From queued to claimed by a worker.", ["model"], buckets=WAIT_BUCKETS
        ),
        inference=histogram(
            "modalkit_job_inference_seconds", "The batch's inference, per job.", ["model"], buckets=INFERENCE_BUCKETS
        ),
        total=histogram("modalkit_job_total_seconds", "From submitted to finished.", ["model"], buckets=WAIT_BUCKETS),
        deliveries=counter(
            "modalkit_deliveries", "Send attempts (outcome: sent, retry, dead).", ["backend", "outcome"]
        ),
        modal_errors=counter("modalkit_modal_errors", "Errors calling Modal, by kind.", ["kind"]),
        sweep_actions=counter("modalkit_sweep_actions", "Rows the sweep acted on, by action.", ["action"]),
    )


def scrape_registry() -> CollectorRegistry:
    """What one scrape serves: every process's instruments, and the database's gauges."""
    from .collector import DatabaseCollector

    client = _client()
    registry = client.CollectorRegistry(auto_describe=False)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        instruments()  # so that a fresh process serves its zeros too
        registry.register(client.REGISTRY)
    registry.register(DatabaseCollector())
    served: CollectorRegistry = registry
    return served
