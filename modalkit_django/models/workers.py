"""Worker heartbeats: each worker process's row, so operators see who is alive and busy."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

__all__ = ["WorkerHeartbeat"]


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

    class Meta:
        ordering = ["-last_beat_at"]
        indexes = [models.Index(fields=["-last_beat_at"], name="modalkit_worker_beat_idx")]

    def __str__(self) -> str:
        return self.name
