"""When, and ahead of what, a job may run: a request's priority, not-before time and deadline.

A request's ``priority``, ``run_after`` and ``deadline`` (or ``ttl``) make a
:class:`Schedule`, which the job-building code applies to each new job (single submits
and batches alike). What the fields mean once stored:

- ``priority``: a worker's claim takes the runnable jobs of the highest priority first,
  then the longest due (``Job.objects.claim``), whatever woke it, so a flood of low jobs
  cannot hold up a high one.
- ``run_after``: the job is not claimed before then (``queued_at``, when it is due, is
  set to it); idle workers look for runnable jobs every ``WORKER["POLL_INTERVAL_SECONDS"]``,
  so it starts that soon after, given a free worker. Its wait in the queue, which the
  global ``async_config.timeout`` counts, begins then.
- ``deadline``/``ttl``: stored as ``expires_at``; never claimed after it, and expired by
  the sweep (failure message sent) if not started by then. ``ttl`` counts from when the
  job is due: ``run_after``, or the submit. Without either, the global timeout applies.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from django.utils import timezone

from ..models.states import JobPriority

if TYPE_CHECKING:
    from ..models import Job

__all__ = ["MAX_AHEAD", "PRIORITY_NAMES", "PriorityName", "Schedule", "priority_name"]

# How far ahead run_after, a deadline or a ttl may reach: a job row is not a calendar,
# and a typo (a year for a day) is better refused than kept queued for ever.
MAX_AHEAD = dt.timedelta(days=30)

PriorityName = Literal["low", "normal", "high"]
PRIORITY_NAMES: dict[str, int] = {"low": JobPriority.LOW, "normal": JobPriority.NORMAL, "high": JobPriority.HIGH}


def priority_name(value: int) -> str:
    """The API's name for a stored priority."""
    return JobPriority(value).name.lower()


@dataclass(frozen=True)
class Schedule:
    """A request's scheduling fields, checked when made (``ValueError`` says what is wrong)."""

    priority: PriorityName = "normal"
    run_after: dt.datetime | None = None
    deadline: dt.datetime | None = None
    ttl: float | None = None

    def __post_init__(self) -> None:
        now = timezone.now()
        if self.priority not in PRIORITY_NAMES:
            raise ValueError(f"priority must be one of {', '.join(PRIORITY_NAMES)}")
        for name in ("run_after", "deadline"):
            value = getattr(self, name)
            if value is None:
                continue
            if timezone.is_naive(value):
                raise ValueError(f"{name} must include a time zone (e.g. 2030-01-01T09:00:00Z)")
            try:
                # The same instant in UTC: PostgreSQL refuses offsets beyond ±15:59 (ISO 8601 allows -16:56).
                value = value.astimezone(dt.UTC)
            except OverflowError:
                raise ValueError(f"{name} is out of range") from None
            object.__setattr__(self, name, value)
            if value > now + MAX_AHEAD:
                raise ValueError(f"{name} is more than {MAX_AHEAD.days} days ahead")
        if self.deadline is not None and self.ttl is not None:
            raise ValueError("give deadline or ttl, not both")
        if self.ttl is not None and not 0 < self.ttl <= MAX_AHEAD.total_seconds():
            raise ValueError(f"ttl must be more than 0 and at most {MAX_AHEAD.total_seconds():g} seconds")
        if self.deadline is not None and self.deadline <= max(now, self.run_after or now):
            raise ValueError("deadline has passed" if self.deadline <= now else "deadline is not after run_after")

    @property
    def is_default(self) -> bool:
        return self == Schedule()

    def fingerprint(self) -> list[Any]:
        """What an Idempotency-Key's request fingerprint adds for this schedule: nothing
        for the default, so requests without these fields keep their earlier fingerprints."""
        return [] if self.is_default else [self.priority, self.run_after, self.deadline, self.ttl]

    def apply(self, job: Job, now: dt.datetime) -> None:
        """Set a new (unsaved) job's priority, not-before time and deadline."""
        job.priority = PRIORITY_NAMES[self.priority]
        due = now
        if self.run_after is not None:
            job.run_after = self.run_after
            if self.run_after > now:
                # Due then: a worker claims it from then on (idle workers look every poll).
                due = job.queued_at = self.run_after
        if self.deadline is not None:
            job.expires_at = self.deadline
        elif self.ttl is not None:
            job.expires_at = due + dt.timedelta(seconds=self.ttl)
