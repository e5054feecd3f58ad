"""``manage.py modalkit``: operate the job service from a shell.

::

    manage.py modalkit health [--timeout 2] [--strict] [--json]
    manage.py modalkit stats
    manage.py modalkit jobs [--status S] [--model M] [--older-than 1h] [--limit 20]
    manage.py modalkit cancel [JOB_ID …] [--status S] [--model M] [--older-than 1h] [--dry-run]
    manage.py modalkit retry [JOB_ID …] [--status S] [--model M] [--older-than 1h] [--dry-run]
    manage.py modalkit redeliver [DELIVERY_ID …] [--status S] [--job JOB_ID] [--model M] [--older-than 1h] [--dry-run]
    manage.py modalkit purge --older-than 30d [--model M] [--batch-size 1000] [--dry-run]
    manage.py modalkit grant KEY [--allow-queue PATTERN …] [--remove-queue PATTERN …]

Each subcommand is a function of the parsed options that returns an :class:`.Outcome`;
the command prints it as text or, with ``--json``, as JSON. Changes go through
:mod:`modalkit_django.jobs` (or the models' verbs), as from the admin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import actions, keys, reports
from .arguments import add_subcommands
from .outcome import Outcome
from .progress import Progress, ProgressReporter

__all__ = ["SUBCOMMANDS", "Outcome", "Progress", "ProgressReporter", "add_subcommands", "run"]

Handler = Callable[[dict[str, Any], Progress], Outcome]

SUBCOMMANDS: dict[str, Handler] = {
    "health": reports.health,
    "stats": reports.stats,
    "jobs": reports.jobs,
    "cancel": actions.cancel,
    "retry": actions.retry,
    "redeliver": actions.redeliver,
    "purge": actions.purge,
    "grant": keys.grant,
}


def run(subcommand: str, options: dict[str, Any], *, progress: Progress) -> Outcome:
    """Run ``subcommand`` with its parsed ``options``; ``progress`` hears about long work."""
    return SUBCOMMANDS[subcommand](options, progress)
