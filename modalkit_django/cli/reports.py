"""The subcommands that only read: health, stats, jobs."""

from __future__ import annotations

from typing import Any

from django.db.models.fields.json import KT

from ..health import probes as health_checks
from ..jobs.stats import job_stats
from ..models import JobStatus, QueueDelivery
from ..redaction import redact_text
from . import selection
from .arguments import format_age
from .outcome import Outcome
from .progress import Progress

__all__ = ["ERROR_WIDTH", "health", "jobs", "stats"]

# Characters of a job's error message `jobs` shows (--json has all of it).
ERROR_WIDTH = 100


def health(options: dict[str, Any], progress: Progress) -> Outcome:
    report = health_checks.check(timeout=options["timeout"])
    width = max(len(check.name) for check in report.checks)
    lines = [
        f"{check.name:<{width}}  {_status(check):<8}  {check.duration_ms:>7.1f} ms  {check.error or check.detail}"
        for check in report.checks
    ]
    lines = [line.strip() for line in lines]
    lines.append(report.summary())
    passed = report.passes(strict=options["strict"])
    return Outcome(report.as_dict(), lines, failure=None if passed else report.summary().removesuffix("."))


def _status(check: health_checks.Check) -> str:
    """A failed check that does not stop the process serving is shown as degrading it."""
    return "degraded" if check.status == "error" and not check.required else check.status


def stats(options: dict[str, Any], progress: Progress) -> Outcome:
    counts = job_stats()
    lines = _table("Jobs", counts.jobs, JobStatus.values, counts.jobs_by_status)
    age = counts.oldest_queued_seconds()
    lines.append(
        f"Oldest queued job: {format_age(age)} ago ({counts.oldest_queued_model})"
        if age is not None
        else "Oldest queued job: none queued"
    )
    lines += ["", *_table("Deliveries", counts.deliveries, QueueDelivery.Status.values, counts.deliveries_by_status)]
    return Outcome(counts.as_dict(), lines)


def jobs(options: dict[str, Any], progress: Progress) -> Outcome:
    selected = selection.jobs(options, require=False).order_by("-created_at", "-id")
    # Not the JSON columns themselves: the error's type and message are enough to tell.
    rows = list(
        selected.values(
            "id",
            "model_name",
            "status",
            "attempts",
            "reruns",
            "created_at",
            "finished_at",
            error_type=KT("error__type"),
            error_message=KT("error__message"),
        )[: max(0, options["limit"])]
    )
    for row in rows:
        if row["error_message"] is not None:
            row["error_message"] = redact_text(row["error_message"])
    lines = [f"{'ID':<36}  {'MODEL':<16}  {'STATUS':<9}  {'TRIES':>5}  {'CREATED':<19}  ERROR"]
    lines += [
        f"{row['id']!s:<36}  {row['model_name']:<16}  {row['status']:<9}  {row['attempts']:>5}  "
        f"{row['created_at']:%Y-%m-%d %H:%M:%S}  {_error(row['error_type'], row['error_message'])}".rstrip()
        for row in rows
    ]
    return Outcome({"jobs": rows}, lines if rows else ["No jobs."])


def _error(error_type: str | None, message: str | None) -> str:
    """``Type: message`` on one line, the message cut at ``ERROR_WIDTH``."""
    if not error_type:
        return ""
    message = " ".join((message or "").split())
    if len(message) > ERROR_WIDTH:
        message = message[: ERROR_WIDTH - 1] + "…"
    return f"{error_type}: {message}" if message else error_type


def _table(title: str, counts: dict[str, dict[str, int]], statuses: list[str], totals: dict[str, int]) -> list[str]:
    width = max([len(title), *(len(name) for name in counts), len("total")])
    header = f"{title:<{width}}" + "".join(f"  {status:>9}" for status in [*statuses, "total"])
    lines = [header]
    for name, row in sorted([*counts.items(), ("total", totals)], key=lambda item: item[0] == "total"):
        cells = [row.get(status, 0) for status in statuses]
        lines.append(f"{name:<{width}}" + "".join(f"  {cell:>9}" for cell in [*cells, sum(cells)]))
    return lines
