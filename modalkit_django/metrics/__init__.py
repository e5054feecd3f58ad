"""Prometheus metrics: what the job path records, and the endpoint that serves them.

Recording is a handful of one-line calls where things happen (a submit commits, a batch
finishes, a delivery is attempted, Modal errs, the sweep acts). Each is safe: with
``MODALKIT["METRICS"]["ENABLED"]`` off it costs one cached settings lookup, and whatever
goes wrong while recording is logged, never raised into the job path.

Counters and histograms live in ``prometheus_client``'s default registry, or, when
``PROMETHEUS_MULTIPROC_DIR`` is set, in its files, shared by every web and worker
process of the host (:mod:`.registry`). Gauges of what is in PostgreSQL (queue depth,
oldest queued job, unsent and dead deliveries) are read at scrape time
(:mod:`.collector`). Mount ``modalkit_django.metrics.urls`` to serve them.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec

from django.utils import timezone

from ..conf import get_settings

if TYPE_CHECKING:
    from ..models import Job, SendResult

__all__ = [
    "deliveries_attempted",
    "enabled",
    "jobs_finished",
    "jobs_submitted",
    "modal_error",
    "process_exited",
    "sweep_actions",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")


def enabled() -> bool:
    """Whether ``MODALKIT["METRICS"]["ENABLED"]`` is on."""
    return get_settings().metrics.enabled


def _recorder(function: Callable[P, None]) -> Callable[P, None]:
    """Record only when enabled; a failure to record is logged, never raised."""

    @functools.wraps(function)
    def record(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            if enabled():
                function(*args, **kwargs)
        except Exception:
            logger.warning("Could not record the %s metric", function.__name__, exc_info=True)

    return record


def _instruments() -> Any:
    from .registry import instruments

    return instruments()


@_recorder
def jobs_submitted(model_names: Iterable[str]) -> None:
    """Jobs stored (committed) by a submit, one model name each."""
    counter = _instruments().submitted
    for model_name in model_names:
        counter.labels(model=model_name).inc()


@_recorder
def jobs_finished(jobs: Sequence[Job], *, inference_seconds: float) -> None:
    """A batch's jobs after ``finish``: their outcome, and how long they waited and ran.

    A job sent back to the queue for another attempt counts as ``status="retried"``.
    """
    found = _instruments()
    now = timezone.now()
    for job in jobs:
        model = job.model_name
        status = job.status if job.is_finished else "retried"
        found.finished.labels(model=model, status=status).inc()
        found.inference.labels(model=model).observe(inference_seconds)
        if job.started_at is not None and job.queued_at is not None:
            found.wait.labels(model=model).observe(max((job.started_at - job.queued_at).total_seconds(), 0.0))
        if job.is_finished:
            found.total.labels(model=model).observe(max(((job.finished_at or now) - job.created_at).total_seconds(), 0))


@_recorder
def deliveries_attempted(results: Sequence[SendResult]) -> None:
    """Send attempts, by backend alias and outcome: ``sent``, ``retry`` (failed, due again) or ``dead``."""
    counter = _instruments().deliveries
    for result in results:
        delivery = result.delivery
        outcome = "sent" if result.error is None else "dead" if delivery.status == "dead" else "retry"
        counter.labels(backend=delivery.backend, outcome=outcome).inc()


@_recorder
def modal_error(exc: BaseException) -> None:
    """An error from Modal (or a deadline around it), by kind: the SDK's exception class.

    An exception the remote pipeline raised is ``kind="pipeline"``: its class is the
    user's and would make a label of unbounded values.
    """
    cls = type(exc)
    from_modal = cls.__module__.partition(".")[0] in {"modal", "grpclib"} or issubclass(cls, TimeoutError)
    kind = cls.__name__ if from_modal else "pipeline"
    _instruments().modal_errors.labels(kind=kind).inc()


@_recorder
def sweep_actions(summary: Mapping[str, int]) -> None:
    """What one sweep did (``SweepResult.summary()``): rows reclaimed, expired, woken…"""
    counter = _instruments().sweep_actions
    for action, count in summary.items():
        if count:
            counter.labels(action=action).inc(count)


def process_exited() -> None:
    """At a worker's exit, in multi-process mode: tell prometheus_client this pid is gone."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
    except Exception:
        logger.warning("Could not mark this process dead for prometheus_client", exc_info=True)
