"""The sweep's shared state: one row, so that one sweep runs per period across all machines."""

from __future__ import annotations

import datetime as dt

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

__all__ = ["SweepState"]


class SweepStateQuerySet(models.QuerySet["SweepState"]):
    def begin(self, *, worker: str, period: float, stale_after: float) -> SweepState | None:
        """Take this period's sweep for ``worker``; ``None`` if another has it.

        A compare-and-set on the one row: it succeeds when no sweep started in the last
        ``period`` seconds and the last one finished, or has run for ``stale_after``
        seconds (its worker died mid-sweep), so however many worker processes try, one
        sweeps per period.
        """
        now = timezone.now()
        taken = self.filter(
            Q(finished_at__gte=F("started_at")) | Q(started_at__lt=now - dt.timedelta(seconds=stale_after)),
            pk=SweepState.SINGLETON,
            started_at__lte=now - dt.timedelta(seconds=period),
        ).update(started_at=now, worker=worker, sweeps=F("sweeps") + 1)
        if not taken:
            # The first sweep ever (or after a flush): whoever creates the row sweeps.
            _, created = self.get_or_create(
                pk=SweepState.SINGLETON, defaults={"started_at": now, "worker": worker, "sweeps": 1}
            )
            if not created:
                return None
        return self.get(pk=SweepState.SINGLETON)


class SweepState(models.Model):
    SINGLETON = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True, help_text="The worker process that swept last.")
    sweeps = models.PositiveBigIntegerField(default=0, help_text="Sweeps run so far, by all workers.")
    # Changes when the broker lost its messages (e.g. Redis restarted empty); every job
    # queued before broker_epoch_since is woken again.
    broker_epoch = models.CharField(max_length=64, blank=True)
    broker_epoch_since = models.DateTimeField(null=True, blank=True)
    last_result = models.JSONField(default=dict, blank=True)

    objects = SweepStateQuerySet.as_manager()

    class Meta:
        verbose_name = "sweep"
        constraints = [models.CheckConstraint(condition=Q(id=1), name="modalkit_sweepstate_singleton")]

    def __str__(self) -> str:
        return f"sweep by {self.worker or 'nobody'} at {self.started_at}"
