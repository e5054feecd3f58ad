"""Worker processes, from their heartbeats: who is live, who stopped, who died."""

from __future__ import annotations

from django.contrib import admin
from django.utils import timezone

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

    @admin.display(description="state")
    def state(self, worker: WorkerHeartbeat) -> str:
        # Dead: no beat for three of this deployment's heartbeat intervals (and no clean stop).
        return status_badge(worker.state(timezone.now(), stale_after=get_settings().worker.stale_after_seconds))
