"""Worker processes, from their heartbeats: who is live, who stopped, who died."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from ..conf import get_settings
from ..models import WorkerHeartbeat
from .common import QueryCheckingAdmin, ReadOnly, status_badge
from .display import clipped, relative, timestamp_field
from .filters import HostnameFilter

__all__ = ["WorkerHeartbeatAdmin"]


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(ReadOnly, QueryCheckingAdmin):
    # The name is "<hostname>:<pid>:<random>": hostname and pid apart are on the worker's page
    # (and the hostname is a filter), so the list fits 1400 pixels.
    list_display = ["worker", "state", "started", "last_beat", "jobs_done", "in_flight"]
    list_display_links = ["worker"]
    list_filter = [HostnameFilter, "last_beat_at"]
    search_fields = ["=name", "=hostname"]
    fields = readonly_fields = (
        "name", "state", "hostname", "pid", "version", "started", "last_beat", "stopped",
        "jobs_done", "deliveries_sent", "in_flight",
    )  # fmt: skip

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkerHeartbeat]:
        # Dead: no beat for three of this deployment's heartbeat intervals (and no clean
        # stop), by the database's clock: an admin host whose clock is off judges the same.
        stale_after = get_settings().worker.stale_after_seconds
        return super().get_queryset(request).with_liveness(stale_after=stale_after)  # type: ignore[attr-defined, no-any-return]

    started = timestamp_field("started_at", "started", sortable=True)
    stopped = timestamp_field("stopped_at", "stopped")

    @admin.display(description="name", ordering="name")
    def worker(self, worker: WorkerHeartbeat) -> str:
        return clipped(worker.name)

    @admin.display(description="last beat", ordering="last_beat_at")
    def last_beat(self, worker: WorkerHeartbeat) -> str:
        # "4 s ago" says more about a heartbeat than its time of day; that is on hover.
        return relative(worker.last_beat_at)

    @admin.display(description="state")
    def state(self, worker: WorkerHeartbeat) -> str:
        return status_badge(worker.state())
