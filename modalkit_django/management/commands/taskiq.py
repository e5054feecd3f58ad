"""``manage.py taskiq worker [TaskIQ worker options]``: TaskIQ's worker, with Django set up.

TaskIQ's own ``taskiq worker`` imports task modules before any startup hook runs,
so tasks that import models crash there. Here Django is set up first, then TaskIQ's
runner takes over with its usual options (``--workers``, ``--max-async-tasks``,
``--log-level``, ``--ack-type``, …); extra positional arguments name more task
modules, e.g. your own TaskIQ consumers, as do the modules in ``MODALKIT["TASK_MODULES"]``.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from modalkit_django.conf import get_settings

BROKER_FACTORY = "modalkit_django.broker:get_broker"
TASK_MODULES = ["modalkit_django.worker.tasks"]


class Command(BaseCommand):
    help = "Run TaskIQ workers for modalkit-django (try: taskiq worker --help)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("subcommand", choices=["worker"], help="Only 'worker' for now.")
        parser.add_argument("taskiq_args", nargs=argparse.REMAINDER, help="Options passed to TaskIQ's worker.")

    def handle(self, *args: Any, subcommand: str, taskiq_args: list[str], **options: Any) -> None:
        from taskiq.cli.worker.args import WorkerArgs
        from taskiq.cli.worker.run import run_worker

        modules = [*TASK_MODULES, *get_settings().task_modules]
        worker_args = WorkerArgs.from_cli([BROKER_FACTORY, *modules, *_with_defaults(taskiq_args)])
        # Children are forked: they must not share the parent's database sockets.
        connections.close_all()
        status = run_worker(worker_args)
        if status:
            raise CommandError(f"taskiq worker exited with status {status}", returncode=status)


def _given(option: str, taskiq_args: list[str]) -> bool:
    return any(arg == option or arg.startswith(f"{option}=") for arg in taskiq_args)


def _with_defaults(taskiq_args: list[str]) -> list[str]:
    """TaskIQ's options, plus defaults for a job worker.

    ``--max-async-tasks``: jobs are run in batches formed from the messages a worker
    holds, so it should hold enough to fill every batch in flight twice over; TaskIQ's
    default (100) caps a batch at about 50. Measured with bench/throughput.py: 100 →
    ~440 jobs/s, 400 → ~630. ``--log-level WARNING``: TaskIQ's INFO logs lines for every
    task, hundreds a second.
    """
    defaults = []
    if not _given("--max-async-tasks", taskiq_args):
        defaults += ["--max-async-tasks", str(get_settings().worker.wake_ups_in_hand)]
    if not _given("--log-level", taskiq_args):
        defaults += ["--log-level", "WARNING"]
    return [*taskiq_args, *defaults]
