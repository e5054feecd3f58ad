"""``manage.py modalkit SUBCOMMAND``: health, stats, jobs, cancel, retry, redeliver, purge, grant.

See :mod:`modalkit_django.cli`; ``manage.py modalkit --help`` lists the subcommands and
``manage.py modalkit SUBCOMMAND --help`` their options.
"""

from __future__ import annotations

import json
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder

from modalkit_django import cli


class Command(BaseCommand):
    help = "Operate the job service: health, stats, jobs, cancel, retry, redeliver, purge, grant."

    def add_arguments(self, parser: CommandParser) -> None:
        cli.add_subcommands(parser)

    def execute(self, *args: Any, **options: Any) -> Any:
        if options.get("subcommand") == "health":
            # It runs the system checks itself and reports them as one of its checks (in
            # its own format, --json included), rather than failing before it reports.
            options["skip_checks"] = True
        return super().execute(*args, **options)

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        # A bar when stderr is a terminal, a line per step in a log. The raw stream: the
        # wrapper would end each of tqdm's in-place redraws with a newline.
        progress = cli.ProgressReporter(cast(TextIO, self.stderr._out))
        try:
            outcome = cli.run(subcommand, options, progress=progress)
        finally:
            progress.close()
        if options["json"]:
            self.stdout.write(json.dumps(outcome.data, cls=DjangoJSONEncoder, indent=2))
        else:
            for line in outcome.lines:
                self.stdout.write(line)
        if outcome.failure:
            raise CommandError(outcome.failure, returncode=1)
