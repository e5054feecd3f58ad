"""Worker processes, from their heartbeats: who is live, who stopped, who died."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from ..conf import get_settings
from ..models import WorkerHeartbeat
from .common import ReadOnly, status_badge
from .filters import HostnameFilter

__all__ = ["WorkerHeartbeatAdmin"]


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(ReadOnly, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "state", "hostname", "pid", "started_at", "last_beat_at", "jobs_done", "in_flight"]
    list_filter = [HostnameFilter, "last_beat_at"]
    search_fields = ["=name", "=hostname"]
    fields = readonly_fields = (
        "name", "state", "hostname", "pid", "version", "started_at", "last_beat_at", "stopped_at",
        "jobs_done", "deliveries_sent", "in_flight",
    )  # fmt: skip

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkerHeartbeat]:
        # Dead: no beat for three of this deployment's heartbeat intervals (and no clean
        # stop), by the database's clock: an admin host whose clock is off judges the same.
        stale_after = get_settings().worker.stale_after_seconds
        return super().get_queryset(request).with_liveness(stale_after=stale_after)  # type: ignore[attr-defined, no-any-return]

    @admin.display(description="state")
    def state(self, worker: WorkerHeartbeat) -> str:
        return status_badge(worker.state())
