"""``manage.py taskiq worker [TaskIQ worker options]``: TaskIQ's worker, with Django set up.

TaskIQ's own ``taskiq worker`` imports task modules before any startup hook runs,
so tasks that import models crash there. Here Django is set up first, then TaskIQ's
runner takes over with its usual options (``--workers``, ``--max-async-tasks``,
``--log-level``, ``--ack-type``, …); extra positional arguments name more task
modules, e.g. your own TaskIQ consumers, as do the modules in ``MODALKIT["TASK_MODULES"]``.
Django's own options (``--settings``, ``--pythonpath``, ``--skip-checks``, …) are taken
wherever they are.

Before any worker process starts, it says in one line what it runs with (the broker, the
database, the models, how much at once), and it:

- refuses to start, with one line per mistake and exit status 1, on a configuration that
  cannot work: a system check error (``manage.py check``), or no broker to read
  (``MODALKIT["BROKER"]["URL"]`` is ``None``: jobs run inside the web process);
- waits, saying why once, while the database does not answer or lacks migrations
  (``migrate`` not run yet): every query of a worker would fail meanwhile.

A broker (Redis, RabbitMQ, NATS) that does not answer is not waited for: the worker
processes start, find their jobs in the database, and read the broker once it answers
(see ``broker/redis_stream.py``, ``broker/rabbitmq.py``, ``broker/jetstream.py``).
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

from django.core import checks
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import load_backend

from modalkit_django.broker import describe_broker
from modalkit_django.checks import one_line
from modalkit_django.conf import default_model_name, get_config, get_settings
from modalkit_django.health.probes import unapplied_migrations
from modalkit_django.redaction import redact_text

BROKER_FACTORY = "modalkit_django.broker:get_broker"
TASK_MODULES = ["modalkit_django.worker.tasks"]

# Django's options every command takes, by whether a value follows: found after
# ``worker`` too, where TaskIQ (which knows none of them) would refuse them.
DJANGO_OPTIONS_WITH_VALUE = ("--settings", "--pythonpath", "--verbosity", "-v")
DJANGO_FLAGS = ("--traceback", "--no-color", "--force-color", "--skip-checks")

NO_BROKER = (
    "Not starting: MODALKIT['BROKER']['URL'] is None, so jobs run inside the web process (the in-process "
    "broker) and a worker would have nothing to read. Set it to a redis://, amqp:// or nats:// URL to run "
    "workers of their own."
)

# The waits for the database: from the first to the longest, doubling.
WAIT_SECONDS = (0.5, 10.0)
CONNECT_TIMEOUT_SECONDS = 5


class Command(BaseCommand):
    help = "Run TaskIQ workers for modalkit-django (try: taskiq worker --help)."

    def run_from_argv(self, argv: list[str]) -> None:
        super().run_from_argv(django_options_first(argv))

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("subcommand", choices=["worker"], help="Only 'worker' for now.")
        parser.add_argument("taskiq_args", nargs=argparse.REMAINDER, help="Options passed to TaskIQ's worker.")

    def check(
        self,
        app_configs: Any = None,
        tags: Any = None,
        display_num_errors: bool = False,
        include_deployment_checks: bool = False,
        fail_level: int = checks.ERROR,
        databases: Any = None,
    ) -> None:
        """The system checks, one line each: warnings are printed, errors refuse to start."""
        found = checks.run_checks(
            app_configs=app_configs,
            tags=tags,
            include_deployment_checks=include_deployment_checks,
            databases=databases,
        )
        errors = []
        for message in found:
            if message.is_silenced():
                continue
            line = redact_text(one_line(message))
            if message.level >= fail_level:
                errors.append(f"Not starting: {line}")
            else:
                self.stderr.write(f"Warning: {line}", self.style.WARNING)
        if errors:
            raise CommandError("\n".join(errors))

    def handle(self, *args: Any, subcommand: str, taskiq_args: list[str], **options: Any) -> None:
        from taskiq.cli.worker.args import WorkerArgs
        from taskiq.cli.worker.run import run_worker

        modules = [*TASK_MODULES, *get_settings().task_modules]
        worker_args = WorkerArgs.from_cli([BROKER_FACTORY, *modules, *_with_defaults(taskiq_args)])
        if get_settings().broker.url is None:
            raise CommandError(NO_BROKER)
        try:
            self._wait_for_the_database()
        except KeyboardInterrupt:
            raise CommandError("Stopped before any worker started.", returncode=130) from None
        self.stdout.write(describe(worker_args))
        self.stdout.flush()  # before the worker processes' lines, in a log file too
        _release_connections()
        status = run_worker(worker_args)
        if status:
            raise CommandError(f"taskiq worker exited with status {status}", returncode=status)

    def _wait_for_the_database(self) -> None:
        """Return once the database answers with every migration applied, saying once
        what is awaited and when it came (a database restarting, ``migrate`` not run yet)."""
        delay, longest = WAIT_SECONDS
        started = time.monotonic()
        waiting_for = ""
        while True:
            connection = _unpooled(DEFAULT_DB_ALIAS)
            try:
                unapplied = unapplied_migrations(connection)
            except DatabaseError as exc:
                kind = "database"
                problem = (
                    f"The database ({_database()}) does not answer "
                    f"({type(exc).__name__}: {_first_line(exc)}); waiting for it"
                )
            else:
                if not unapplied:
                    if waiting_for:
                        self.stderr.write(f"The database is ready after {time.monotonic() - started:.1f}s; starting")
                    return
                kind = "migrations"
                named = ", ".join(unapplied[:3]) + (f" and {len(unapplied) - 3} more" if len(unapplied) > 3 else "")
                problem = (
                    f"The database lacks {len(unapplied)} migration{'s' if len(unapplied) != 1 else ''} "
                    f"({named}): run `manage.py migrate`; waiting for them"
                )
            finally:
                connection.close()
            if kind != waiting_for:
                self.stderr.write(redact_text(problem), self.style.WARNING)
                waiting_for = kind
            time.sleep(delay)
            delay = min(delay * 2, longest)


def django_options_first(argv: list[str]) -> list[str]:
    """``argv`` with Django's options moved before the subcommand, where Django reads them:
    after it, all goes to TaskIQ."""
    prog, name, rest = argv[0], argv[1], argv[2:]
    django: list[str] = []
    others: list[str] = []
    index = 0
    while index < len(rest):
        arg = rest[index]
        option = arg.partition("=")[0]
        if arg == "--":  # what follows is TaskIQ's, whatever it looks like
            others += rest[index:]
            break
        if option in DJANGO_FLAGS:
            django.append(arg)
        elif option in DJANGO_OPTIONS_WITH_VALUE and "=" not in arg and index + 1 < len(rest):
            django += [arg, rest[index + 1]]
            index += 1
        elif option in DJANGO_OPTIONS_WITH_VALUE or (arg.startswith("-v") and arg[2:].isdigit()):
            django.append(arg)
        else:
            others.append(arg)
        index += 1
    return [prog, name, *django, *others]


def describe(worker_args: Any) -> str:
    """The start-up line: the processes, the broker, the database, the models, how much at once."""
    settings = get_settings()
    worker = settings.worker
    processes = f"{worker_args.workers} worker process{'es' if worker_args.workers != 1 else ''}"
    broker = describe_broker()
    return (
        f"Starting {processes}: broker {broker}; database {_database()}; models {_models()}; each process runs "
        f"{worker.batches_in_flight} batches of up to {worker.batch_size} jobs at once and holds up to "
        f"{worker_args.max_async_tasks} wake-ups."
    )


def _database() -> str:
    """The default database as an operator names it: no user, no password."""
    connection = connections[DEFAULT_DB_ALIAS]
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite {settings['NAME']}"
    where = f"{settings.get('HOST') or 'localhost'}:{settings.get('PORT') or 'default port'}"
    return f"{connection.vendor} {settings['NAME']} on {where}"


def _models() -> str:
    entries = list(get_config().model_settings.model_entries)
    try:
        default = default_model_name()
    except Exception:  # the system checks said so (E004)
        default = None
    names = [f"{name} (default)" if name == default else name for name in entries[:5]]
    more = f" and {len(entries) - 5} more" if len(entries) > 5 else ""
    backend = get_settings().inference.backend_path.rpartition(".")[2]
    return f"{', '.join(names)}{more} on {backend}"


def _unpooled(alias: str) -> BaseDatabaseWrapper:
    """A connection to the database ``alias`` of its own, outside Django's pool (whose
    threads would log every failed attempt, and whose connections the forked worker
    processes would share), that gives up connecting after a while."""
    settings = copy.deepcopy(connections.settings[alias])
    settings["OPTIONS"] = {key: value for key, value in settings.get("OPTIONS", {}).items() if key != "pool"}
    if settings["ENGINE"] == "django.db.backends.postgresql":
        settings["OPTIONS"].setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    wrapper: BaseDatabaseWrapper = load_backend(settings["ENGINE"]).DatabaseWrapper(settings, alias)
    return wrapper


def _release_connections() -> None:
    """Close this process's database connections, pools included: worker processes are
    forked from it, and two processes sharing a socket corrupt each other's queries."""
    for connection in connections.all(initialized_only=True):
        connection.close()
        close_pool = getattr(connection, "close_pool", None)  # PostgreSQL with a pool (Django ≥ 5.1)
        if close_pool is not None:
            close_pool()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


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
