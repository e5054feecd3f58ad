"""The subcommands that change rows: cancel, retry, redeliver, purge. Each acts through
``services`` (or the model's own verb), set-based; ``--dry-run`` only counts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.utils import timezone

from ..jobs.control import BulkResult, cancel_jobs, redeliver_deliveries, rerun_jobs
from ..models import Job, JobQuerySet
from . import selection
from .outcome import Outcome, by_status, counted
from .progress import Progress

__all__ = ["cancel", "purge", "redeliver", "retry"]


def cancel(options: dict[str, Any], progress: Progress) -> Outcome:
    return _jobs_action("cancel", options, selection.would_cancel, cancel_jobs, verb="Canceled")


def retry(options: dict[str, Any], progress: Progress) -> Outcome:
    return _jobs_action("retry", options, selection.would_rerun, rerun_jobs, verb="Re-ran")


def _jobs_action(
    action: str,
    options: dict[str, Any],
    would_change: Callable[[JobQuerySet], int],
    act: Callable[[JobQuerySet], BulkResult],
    *,
    verb: str,
) -> Outcome:
    jobs = selection.jobs(options, require=True)
    data: dict[str, Any] = {"action": action, "dry_run": options["dry_run"]}
    not_found = selection.missing(jobs, options["ids"]) if options["ids"] else []
    if not_found:
        data["not_found"] = not_found
    if options["dry_run"]:
        selected = selection.count_by_status(jobs)
        count = would_change(jobs)
        data |= {"selected": selected, "would_change": count}
        lines = [
            f"Would {action} {count} of {counted(sum(selected.values()), 'selected job')} ({by_status(selected)}).",
            "Dry run: nothing was changed.",
        ]
    else:
        result = act(jobs)
        data |= {"changed": result.done, "left_alone": result.left_alone}
        lines = [f"{verb} {counted(result.done, 'job')}; left alone: {by_status(result.left_alone)}."]
    if not_found:
        lines.append(f"Not found: {', '.join(not_found)}")
    return Outcome(data, lines)


def redeliver(options: dict[str, Any], progress: Progress) -> Outcome:
    deliveries = selection.deliveries(options)
    data: dict[str, Any] = {"action": "redeliver", "dry_run": options["dry_run"]}
    not_found = selection.missing(deliveries, options["ids"]) if options["ids"] else []
    if not_found:
        data["not_found"] = not_found
    if options["dry_run"]:
        # Every selected delivery is sent again, whatever its status.
        selected = selection.count_by_status(deliveries)
        data |= {"selected": selected, "would_change": sum(selected.values())}
        lines = [
            f"Would redeliver {counted(sum(selected.values()), 'delivery', 'deliveries')} ({by_status(selected)}).",
            "Dry run: nothing was changed.",
        ]
    else:
        count = redeliver_deliveries(deliveries)
        data["changed"] = count
        lines = [f"Redelivering {counted(count, 'delivery', 'deliveries')}."]
    if not_found:
        lines.append(f"Not found: {', '.join(not_found)}")
    return Outcome(data, lines)


def purge(options: dict[str, Any], progress: Progress) -> Outcome:
    """Delete finished jobs in batches of ``--batch-size``, each in its own transaction."""
    finished_before = timezone.now() - options["older_than"]
    jobs = Job.objects.all()
    if options["model"]:
        jobs = jobs.filter(model_name__in=options["model"])
    data: dict[str, Any] = {"action": "purge", "dry_run": options["dry_run"], "finished_before": finished_before}
    if options["dry_run"]:
        selected = selection.count_by_status(selection.would_purge(jobs, finished_before=finished_before))
        data |= {"selected": selected, "would_change": sum(selected.values())}
        lines = [
            f"Would purge {counted(sum(selected.values()), 'job')} finished before {finished_before:%Y-%m-%d %H:%M:%S} "
            f"({by_status(selected)}).",
            "Dry run: nothing was changed.",
        ]
        return Outcome(data, lines)
    batch_size = max(1, options["batch_size"])
    # Counted once for the bar; a job finishing meanwhile is purged too, or next time.
    planned = selection.would_purge(jobs, finished_before=finished_before).count()
    total = 0
    # A short batch means nothing is left, or the rest is locked (re-run or redelivered
    # at this moment) and stays anyway: stop there.
    older_than = options["older_than"].total_seconds()
    while deleted := jobs.purge_finished(older_than=older_than, limit=batch_size):
        total += deleted
        progress(total, max(planned, total), "Purging jobs")
        if deleted < batch_size:
            break
    data["changed"] = total
    return Outcome(data, [f"Purged {counted(total, 'job')} finished before {finished_before:%Y-%m-%d %H:%M:%S}."])
