"""Gauges read from PostgreSQL at scrape time: what is queued, how old, what is undelivered.

A custom collector, not multi-process gauges: the database already knows these numbers
across every process, and reading them when scraped keeps them exact. Each is one
grouped query on a partial index (queued jobs, unsent deliveries) or a small one (dead
deliveries, live workers). If the database does not answer, the scrape still serves the
counters, with ``modalkit_metrics_database_up 0``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from django.db import DatabaseError
from django.db.models import Count, Min
from django.utils import timezone

from ..conf import get_settings
from ..models import Job, JobStatus, QueueDelivery, WorkerHeartbeat
from ..models.states import UNSENT_DELIVERY_STATUSES, DeliveryStatus

__all__ = ["DatabaseCollector"]

logger = logging.getLogger(__name__)


class DatabaseCollector:
    """A prometheus_client collector (anything with ``collect()``) over the app's tables."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("modalkit_metrics_database_up", "1 if the database answered this scrape.")
        try:
            families = list(self._families(GaugeMetricFamily))
        except DatabaseError as exc:
            logger.warning("Metrics: the database did not answer (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, gauge: Any) -> Iterator[Any]:
        now = timezone.now()
        queued = Job.objects.filter(status=JobStatus.QUEUED)
        depth = gauge("modalkit_queue_depth", "Jobs queued, waiting for a worker.", labels=["model", "priority"])
        for row in queued.values("model_name", "priority").annotate(count=Count("id")).order_by():
            depth.add_metric([row["model_name"], str(row["priority"])], row["count"])
        yield depth

        oldest = queued.aggregate(oldest=Min("queued_at"))["oldest"]
        age = gauge("modalkit_oldest_queued_seconds", "How long the longest-waiting queued job has waited.")
        age.add_metric([], max((now - oldest).total_seconds(), 0.0) if oldest else 0.0)
        yield age

        by_backend = QueueDelivery.objects.order_by().values("backend")
        for name, help_text, statuses in (
            ("modalkit_deliveries_unsent", "Deliveries not sent yet (pending or retrying).", UNSENT_DELIVERY_STATUSES),
            ("modalkit_deliveries_dead", "Deliveries given up on (redeliver them).", (DeliveryStatus.DEAD,)),
        ):
            family = gauge(name, help_text, labels=["backend"])
            for backend, count in (
                by_backend.filter(status__in=statuses).annotate(count=Count("id")).values_list("backend", "count")
            ):
                family.add_metric([backend], count)
            yield family

        workers = gauge("modalkit_workers_live", "Worker processes that beat recently.")
        workers.add_metric(
            [], WorkerHeartbeat.objects.live(stale_after=get_settings().worker.stale_after_seconds).count()
        )
        yield workers
