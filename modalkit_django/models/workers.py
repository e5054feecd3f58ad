"""Worker heartbeats: each worker process's row, so operators see who is alive and busy."""

from __future__ import annotations

import datetime as dt

from django.db import models
from django.utils import timezone

__all__ = ["DEFAULT_STALE_AFTER_SECONDS", "WorkerHeartbeat", "WorkerHeartbeatQuerySet"]

# A worker that has not beaten for this long is dead: three beats missed at the shipped
# WORKER["HEARTBEAT_SECONDS"] of 10. Callers with other timers pass their own (see
# ``modalkit_django.heartbeats.stale_after``): models do not read settings.
DEFAULT_STALE_AFTER_SECONDS = 30.0


def _beat_cutoff(now: dt.datetime | None, stale_after: float) -> dt.datetime:
    return (now or timezone.now()) - dt.timedelta(seconds=stale_after)


class WorkerHeartbeatQuerySet(models.QuerySet["WorkerHeartbeat"]):
    def live(
        self, now: dt.datetime | None = None, *, stale_after: float = DEFAULT_STALE_AFTER_SECONDS
    ) -> WorkerHeartbeatQuerySet:
        """Workers running now: not stopped, and beaten within ``stale_after`` seconds."""
        return self.filter(stopped_at__isnull=True, last_beat_at__gte=_beat_cutoff(now, stale_after))

    def dead(
        self, now: dt.datetime | None = None, *, stale_after: float = DEFAULT_STALE_AFTER_SECONDS
    ) -> WorkerHeartbeatQuerySet:
        """Workers that stopped beating without a clean shutdown (killed, crashed, lost)."""
        return self.filter(stopped_at__isnull=True, last_beat_at__lt=_beat_cutoff(now, stale_after))

    def prune(self, *, older_than: float, now: dt.datetime | None = None) -> int:
        """Delete the rows of workers gone (dead or stopped) for more than ``older_than`` seconds."""
        deleted, _ = self.filter(last_beat_at__lt=_beat_cutoff(now, older_than)).delete()
        return deleted


class WorkerHeartbeat(models.Model):
    """One worker process (or the embedded broker's loop), from its start to its last beat."""

    # "<hostname>:<pid>:<random>": unique across restarts that reuse a pid.
    name = models.CharField(max_length=255, primary_key=True)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    last_beat_at = models.DateTimeField(default=timezone.now)
    # Set on a clean shutdown; a worker that died keeps NULL and stops beating.
    stopped_at = models.DateTimeField(null=True, blank=True)
    jobs_done = models.PositiveBigIntegerField(default=0, help_text="Jobs this process finished.")
    deliveries_sent = models.PositiveBigIntegerField(default=0, help_text="Deliveries this process sent.")
    in_flight = models.PositiveIntegerField(default=0, help_text="Jobs running at the last beat.")
    version = models.CharField(max_length=32, blank=True, help_text="modalkit-django's version.")

    objects = WorkerHeartbeatQuerySet.as_manager()

    class Meta:
        ordering = ["-last_beat_at"]
        indexes = [models.Index(fields=["-last_beat_at"], name="modalkit_worker_beat_idx")]

    def __str__(self) -> str:
        return self.name

    def state(self, now: dt.datetime | None = None, *, stale_after: float = DEFAULT_STALE_AFTER_SECONDS) -> str:
        """``"live"``, ``"stopped"`` (clean shutdown) or ``"dead"`` (stopped beating): for the admin."""
        if self.stopped_at is not None:
            return "stopped"
        return "live" if self.is_live(now, stale_after=stale_after) else "dead"

    def is_live(self, now: dt.datetime | None = None, *, stale_after: float = DEFAULT_STALE_AFTER_SECONDS) -> bool:
        """Running now: not stopped, and its last beat is at most ``stale_after`` seconds old."""
        return self.stopped_at is None and self.last_beat_at >= _beat_cutoff(now, stale_after)
