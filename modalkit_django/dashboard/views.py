"""The dashboard page: the admin mounts it beside the jobs list (see the Job admin's URLs)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.http import HttpResponseBadRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from ..models import Job, QueueDelivery
from ..redaction import redact_text
from .charts import WIDTH, Series, bar_chart, human_seconds, series_chart
from .queries import SCHEDULED, WINDOWS, Dashboard, Latency, dashboard_numbers

if TYPE_CHECKING:
    from django.contrib.admin import AdminSite
    from django.http import HttpRequest, HttpResponse

__all__ = ["dashboard_view"]


def dashboard_view(request: HttpRequest, *, site: AdminSite) -> HttpResponse:
    """Jobs, latencies and deliveries over the last hour (``?window=hour``) or day (``?window=day``)."""
    if not request.user.has_perm("modalkit_django.view_job"):
        raise PermissionDenied("Viewing jobs is required to see the jobs dashboard.")
    name = request.GET.get("window", "hour")
    if name not in WINDOWS:
        return HttpResponseBadRequest(f"Unknown window {name!r}: use one of {', '.join(WINDOWS)}.")
    numbers = dashboard_numbers(WINDOWS[name])
    # The template's {% url 'admin:…' %} then resolves on this site, as the admin's own views do.
    request.current_app = site.name
    context = {
        **site.each_context(request),
        "title": "Jobs dashboard",
        "opts": Job._meta,
        "numbers": numbers,
        "windows": WINDOWS.values(),
        "oldest_queued_age": human_seconds(numbers.oldest_queued_seconds),
        "latencies": [
            _latency_row("Queue wait", "started - queued", numbers.queue_wait),
            _latency_row("Inference", "finished - started", numbers.inference),
            _latency_row("Delivery", "sent - created (as its job finished)", numbers.delivery),
        ],
        "status_links": _status_links(site, numbers),
        "dead": [_dead_row(site, dead) for dead in numbers.dead],
        "dead_list_url": _url(site, "queuedelivery_changelist") + "?status__exact=dead",
        "charts": _charts(numbers),
        "delivery_statuses": QueueDelivery.Status.values,
        "delivery_rows": [
            (backend, [row.get(status, 0) for status in QueueDelivery.Status.values], sum(row.values()))
            for backend, row in sorted(numbers.deliveries.items())
        ],
    }
    return TemplateResponse(request, "modalkit_django/dashboard.html", context)


def _url(site: AdminSite, name: str, *args: Any) -> str:
    return reverse(f"{site.name}:modalkit_django_{name}", args=args)


def _latency_row(name: str, measured: str, latency: Latency) -> dict[str, str]:
    return {"name": name, "measured": measured, "p50": human_seconds(latency.p50), "p95": human_seconds(latency.p95)}


def _status_links(site: AdminSite, numbers: Dashboard) -> list[dict[str, Any]]:
    jobs = _url(site, "job_changelist")
    links = []
    for status, count in numbers.jobs_by_status.items():
        note = ""
        if status == SCHEDULED:
            note = f"next due {_due(numbers.next_due_at, numbers.now)}" if numbers.next_due_at else "none"
        links.append({"status": status, "count": count, "url": f"{jobs}?status__exact={status}", "note": note})
    return links


def _due(at: dt.datetime, now: dt.datetime) -> str:
    local = timezone.localtime(at)
    return f"{local:%Y-%m-%d %H:%M:%S} (in {human_seconds((at - now).total_seconds())})"


def _dead_row(site: AdminSite, dead: Any) -> dict[str, Any]:
    return {
        "delivery": dead,
        # As everywhere in the admin: errors quote URLs, and URLs often hold a token.
        "error": redact_text(dead.last_error),
        "short_id": str(dead.id)[:8],
        "short_job_id": str(dead.job_id)[:8],
        "url": _url(site, "queuedelivery_change", dead.id),
        "job_url": _url(site, "job_change", dead.job_id),
    }


def _charts(numbers: Dashboard) -> dict[str, Any]:
    fmt = "%H:%M" if numbers.window.name == "hour" else "%H:00"
    labels = [timezone.localtime(bucket.start).strftime(fmt) for bucket in numbers.buckets]
    buckets = numbers.buckets
    title = numbers.window.label

    def latency(name: str, attribute: str) -> Any:
        return series_chart(
            f"{name}, p50 and p95, {title}",
            labels,
            [
                Series("p50", [getattr(bucket, attribute).p50 for bucket in buckets], "mk-p50"),
                Series("p95", [getattr(bucket, attribute).p95 for bucket in buckets], "mk-p95"),
            ],
            unit="s",
        )

    return {
        "status": bar_chart(
            f"Jobs by status ({title} for finished ones)",
            [(status, count) for status, count in numbers.jobs_by_status.items()],
        ),
        "model": bar_chart("Jobs by model", list(numbers.jobs_by_model.items())),
        "backend": bar_chart(f"Deliveries by backend, {title}", list(numbers.deliveries_by_backend.items())),
        "throughput": series_chart(
            f"Finished jobs per {_bucket_name(numbers)}, {title}",
            labels,
            [
                Series("finished", [bucket.finished for bucket in buckets], "mk-finished", "bar"),
                Series("failed", [bucket.failed for bucket in buckets], "mk-failed", "bar"),
            ],
            width=2 * WIDTH,
        ),
        "queue_wait": latency("Queue wait", "queue_wait"),
        "inference": latency("Inference", "inference"),
        "delivery": latency("Delivery", "delivery"),
    }


def _bucket_name(numbers: Dashboard) -> str:
    minutes = int(numbers.window.bucket.total_seconds() // 60)
    return f"{minutes} minutes" if minutes < 60 else "hour"
