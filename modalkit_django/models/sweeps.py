"""The sweep's shared state: one row, so that one sweep runs per period across all machines."""

from __future__ import annotations

import datetime as dt

from django.db import models
from django.db.models import Case, F, Q, When
from django.db.models.functions import Now

__all__ = ["SweepState"]


class SweepStateQuerySet(models.QuerySet["SweepState"]):
    def begin(
        self, *, worker: str, period: float, stale_after: float, stopped_after: float, quiet_for: float
    ) -> SweepState | None:
        """Take this period's sweep for ``worker``; ``None`` if another has it.

        A compare-and-set on the one row, by the database's clock: it succeeds when no
        sweep started in the last ``period`` seconds and the last one finished, or has run
        for ``stale_after`` seconds (its worker died mid-sweep), so however many worker
        processes try, one sweeps per period, whatever their hosts' clocks say.

        When the last sweep started more than ``stopped_after`` seconds ago, the sweeps
        had stopped (the database was away or paused, or no worker ran): this sweep and
        those of the next ``quiet_for`` seconds are quiet (``SweepState.quiet``), so that
        renewals held up by the same outage land before a lease is judged expired.
        """
        taken = self.filter(
            Q(finished_at__gte=F("started_at")) | Q(started_at__lt=Now() - dt.timedelta(seconds=stale_after)),
            pk=SweepState.SINGLETON,
            started_at__lte=Now() - dt.timedelta(seconds=period),
        ).update(
            # Every SET sees the row as it was: started_at here is the last sweep's start.
            quiet_until=Case(
                When(
                    started_at__lt=Now() - dt.timedelta(seconds=stopped_after),
                    then=Now() + dt.timedelta(seconds=quiet_for),
                ),
                default=F("quiet_until"),
            ),
            started_at=Now(),
            worker=worker,
            sweeps=F("sweeps") + 1,
        )
        if not taken:
            # The first sweep ever (or after a flush): whoever creates the row sweeps.
            _, created = self.get_or_create(
                pk=SweepState.SINGLETON, defaults={"started_at": Now(), "worker": worker, "sweeps": 1}
            )
            if not created:
                return None
        state = self.get(pk=SweepState.SINGLETON)
        state.quiet = self.filter(pk=SweepState.SINGLETON, quiet_until__gt=Now()).exists()
        # Both made by the update above, from the same statement time: exactly quiet_for apart.
        quiet_until, started_at = state.quiet_until, state.started_at
        if quiet_until is not None and started_at is not None:
            state.quiet_began = quiet_until == started_at + dt.timedelta(seconds=quiet_for)
        return state


class SweepState(models.Model):
    SINGLETON = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True, help_text="The worker process that swept last.")
    sweeps = models.PositiveBigIntegerField(default=0, help_text="Sweeps run so far, by all workers.")
    # Until then, sweeps reclaim no lease: the sweeps had stopped (an outage), and live
    # workers' renewals held up by it are given time to land (SweepStateQuerySet.begin).
    quiet_until = models.DateTimeField(null=True, blank=True)
    last_result = models.JSONField(default=dict, blank=True)

    objects = SweepStateQuerySet.as_manager()

    # Not stored, set by ``begin``: whether this sweep leaves expired leases alone, and
    # whether it is the first of such a quiet time.
    quiet = False
    quiet_began = False

    class Meta:
        verbose_name = "sweep"
        constraints = [models.CheckConstraint(condition=Q(id=1), name="modalkit_sweepstate_singleton")]

    def __str__(self) -> str:
        return f"sweep by {self.worker or 'nobody'} at {self.started_at}"
