"""The subcommands of ``manage.py modalkit`` and their options."""

from __future__ import annotations

import argparse
import datetime as dt
import re

from django.core.management.base import CommandParser

from ..health.probes import DEFAULT_TIMEOUT_SECONDS
from ..models import JobStatus, QueueDelivery

__all__ = ["add_subcommands", "format_age", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")

EPILOG = """\
Select jobs (or deliveries) by id, by filter, or both (ids within the filter).
--older-than counts from creation; purge counts from when the job finished.
Durations: 90s, 15m, 1h, 1h30m, 2d, 1w. Every subcommand takes --json.
"""


def parse_duration(text: str) -> dt.timedelta:
    """``"1h30m"`` → 90 minutes: numbers with a unit (s, m, h, d, w), summed."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m, 1h30m, 2d or 1w")
    return dt.timedelta(seconds=sum(float(number) * _UNITS[unit] for number, unit in parts))


def format_age(seconds: float) -> str:
    """``312.4`` → ``"5m 12s"``: the two largest units."""
    remaining = int(seconds)
    pieces: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if remaining >= size or (unit == "s" and not pieces):
            pieces.append(f"{remaining // size}{unit}")
            remaining %= size
    return " ".join(pieces[:2])


def add_subcommands(parser: CommandParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    common = CommandParser(add_help=False)
    common.add_argument("--json", action="store_true", help="Print JSON instead of text.")
    subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    def add(name: str, help_text: str) -> CommandParser:
        sub: CommandParser = subcommands.add_parser(name, help=help_text, description=help_text, parents=[common])
        return sub

    health = add(
        "health",
        "Run the readiness checks, as GET /ready does; exit status 1 if the process could not serve "
        "(database, migrations, configuration).",
    )
    health.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="Seconds per check (default %(default)s)."
    )
    health.add_argument(
        "--strict",
        action="store_true",
        help="Exit status 1 if any check failed, the broker, queues and Modal included (as /ready?strict=1).",
    )

    add("stats", "Jobs by model and status, the oldest queued job's age, deliveries by status.")

    jobs = add("jobs", "List jobs, newest first.")
    _job_filters(jobs)
    jobs.add_argument("--limit", type=int, default=20, help="At most this many (default %(default)s).")

    for name, help_text in (
        ("cancel", "Cancel queued jobs (and running ones on a known Modal call); their failure queues hear of it."),
        ("retry", "Run finished jobs again, each as a new generation with fresh deliveries."),
    ):
        action = add(name, help_text)
        action.add_argument("ids", nargs="*", metavar="JOB_ID")
        _job_filters(action)
        _dry_run(action)

    redeliver = add("redeliver", "Send deliveries' stored messages again, with a fresh attempt budget.")
    redeliver.add_argument("ids", nargs="*", metavar="DELIVERY_ID")
    redeliver.add_argument(
        "--status", action="append", choices=QueueDelivery.Status.values, help="Delivery status; repeatable."
    )
    redeliver.add_argument("--job", action="append", dest="jobs", metavar="JOB_ID", help="Deliveries of this job.")
    redeliver.add_argument("--model", action="append", help="Deliveries of this model's jobs; repeatable.")
    redeliver.add_argument("--older-than", type=parse_duration, metavar="DURATION", help="Created longer ago.")
    _dry_run(redeliver)

    purge = add("purge", "Delete finished jobs (with their deliveries) once their results are delivered.")
    purge.add_argument(
        "--older-than", type=parse_duration, required=True, metavar="DURATION", help="Finished longer ago."
    )
    purge.add_argument("--model", action="append", help="This model's jobs only; repeatable.")
    purge.add_argument(
        "--batch-size", type=int, default=1000, help="Jobs deleted per transaction (default %(default)s)."
    )
    _dry_run(purge)

    grant = add("grant", "Show, grant or take back the queues an API key may send results to.")
    grant.add_argument("key", metavar="KEY", help="The key's prefix, as the admin lists it (mk_AbC123), or the key.")
    grant.add_argument(
        "--allow-queue",
        action="append",
        dest="allowed_queues",
        metavar="PATTERN",
        help='A queue name or pattern ("acme-*", "*") the key may send results to from now on; repeatable.',
    )
    grant.add_argument(
        "--remove-queue",
        action="append",
        dest="removed_queues",
        metavar="PATTERN",
        help="A name or pattern to take back, as it was granted; repeatable.",
    )


def _job_filters(parser: CommandParser) -> None:
    parser.add_argument("--status", action="append", choices=JobStatus.values, help="Job status; repeatable.")
    parser.add_argument("--model", action="append", help="Model name; repeatable.")
    parser.add_argument("--older-than", type=parse_duration, metavar="DURATION", help="Created longer ago.")


def _dry_run(parser: CommandParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="Count what would change, by status; change nothing.")
