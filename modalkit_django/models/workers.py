"""Worker heartbeats: each worker process's row, so operators see who is alive and busy."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import models
from django.db.models import Case, Value, When
from django.db.models.functions import Now
from django.utils import timezone

__all__ = ["DEFAULT_STALE_AFTER_SECONDS", "WorkerHeartbeat", "WorkerHeartbeatQuerySet"]

# A worker that has not beaten for this long is dead: three beats missed at the shipped
# WORKER["HEARTBEAT_SECONDS"] of 10. Callers with other timers pass their own
# (``get_settings().worker.stale_after_seconds``): models do not read settings.
DEFAULT_STALE_AFTER_SECONDS = 30.0


def _beat_cutoff(stale_after: float) -> Any:
    # The database's clock: the one that wrote every beat, whatever the reader's host says.
    return Now() - dt.timedelta(seconds=stale_after)


class WorkerHeartbeatQuerySet(models.QuerySet["WorkerHeartbeat"]):
    def live(self, *, stale_after: float = DEFAULT_STALE_AFTER_SECONDS) -> WorkerHeartbeatQuerySet:
        """Workers running now: not stopped, and beaten within ``stale_after`` seconds."""
        return self.filter(stopped_at__isnull=True, last_beat_at__gte=_beat_cutoff(stale_after))

    def dead(self, *, stale_after: float = DEFAULT_STALE_AFTER_SECONDS) -> WorkerHeartbeatQuerySet:
        """Workers that stopped beating without a clean shutdown (killed, crashed, lost)."""
        return self.filter(stopped_at__isnull=True, last_beat_at__lt=_beat_cutoff(stale_after))

    def with_liveness(self, *, stale_after: float = DEFAULT_STALE_AFTER_SECONDS) -> WorkerHeartbeatQuerySet:
        """Each row annotated with its ``liveness`` (``live``, ``stopped``, ``dead``) by the
        database's clock, for pages that show it (:meth:`WorkerHeartbeat.state`)."""
        return self.annotate(
            liveness=Case(
                When(stopped_at__isnull=False, then=Value("stopped")),
                When(last_beat_at__gte=_beat_cutoff(stale_after), then=Value("live")),
                default=Value("dead"),
                output_field=models.CharField(),
            )
        )

    def prune(self, *, older_than: float) -> int:
        """Delete the rows of workers gone (dead or stopped) for more than ``older_than`` seconds."""
        deleted, _ = self.filter(last_beat_at__lt=_beat_cutoff(older_than)).delete()
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

    def state(self) -> str:
        """``"live"``, ``"stopped"`` (clean shutdown) or ``"dead"`` (stopped beating), as
        annotated by ``WorkerHeartbeat.objects.with_liveness()``: the database's clock
        judges, never the reader's."""
        liveness: str = self.liveness  # type: ignore[attr-defined]
        return liveness
