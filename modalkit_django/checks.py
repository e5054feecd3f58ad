"""System checks: every configuration mistake we can see before the first request.

Each check has a stable id, listed once in :data:`CHECKS` with what it means and its
hint; the documentation's table of checks is generated from it.

Checks have no side effects: they validate backend classes and their options by
building a backend and closing it again (constructors connect nowhere), and look task
modules up without importing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.utils.module_loading import import_string

from . import conf
from .broker import TRANSPORTS, transport_for, url_forms
from .exceptions import ModalkitImproperlyConfigured
from .inference.config import DEFAULT_APP_PREFIX, ModalkitConfig, unknown_keys
from .metrics.checks import check_metrics
from .queues.memory import MemoryBackend

__all__ = ["CHECKS", "CHECK_TAG", "EXTRAS", "Check", "check_modalkit", "one_line", "register"]

# The optional dependencies, by the module that is missing, and the extra that brings them.
EXTRAS = {
    "boto3": "sqs",
    "botocore": "sqs",
    "modal": "modal",
    **{module: transport.extra for transport in TRANSPORTS for module in transport.requires},
    "httpx": "webhook",
}

# The tag of this app's checks: ``manage.py check --tag modalkit`` runs only them.
CHECK_TAG = "modalkit"

MINIMAL_CONFIG = "model_settings:\n  model_entries:\n    my_model: {}"


@dataclass(frozen=True)
class Check:
    """One check id: its level, what it means, and the hint it reports."""

    level: int
    summary: str
    # Where the hint depends on the mistake, <angle brackets> stand for what it fills in.
    hint: str


def _error(summary: str, hint: str) -> Check:
    return Check(checks.ERROR, summary, hint)


def _warning(summary: str, hint: str) -> Check:
    return Check(checks.WARNING, summary, hint)


# Every id this app reports (metrics/checks.py reports E011 too); tests/test_checks.py
# holds this to the ids the code emits, both ways.
CHECKS = {
    "modalkit_django.E001": _error(
        "`settings.MODALKIT` does not match its schema.", "See the MODALKIT settings reference in the documentation."
    ),
    "modalkit_django.E002": _error(
        "`modalkit.yaml` is missing, unreadable or invalid.",
        "Set MODALKIT['CONFIG'] or MODALKIT_CONFIG; the smallest modalkit.yaml is: <the smallest modalkit.yaml>",
    ),
    "modalkit_django.E003": _error(
        '`MODALKIT["PIPELINE"]` is unset, cannot be imported or is not an `InferencePipeline`.',
        "Set MODALKIT['PIPELINE'] to the dotted path of your InferencePipeline subclass.",
    ),
    "modalkit_django.E004": _error(
        "The default model is not one of `model_entries`, or there is none to default to.",
        "Set MODALKIT['DEFAULT_MODEL'] to one of: <the model entries>.",
    ),
    "modalkit_django.E005": _error(
        "A backend class (queue or inference) cannot be imported.", "Check the dotted path."
    ),
    "modalkit_django.E006": _error(
        'A queue alias used by routing is not in `MODALKIT["QUEUES"]`.',
        "Define it in MODALKIT['QUEUES'], or fix modalkit.yaml queue_config.backend / QUEUE_ROUTES.",
    ),
    "modalkit_django.E007": _error(
        "The broker URL names no broker: it is not a Redis, RabbitMQ or NATS URL.",
        "Use redis://host:port/db, redis+sentinel://sentinel:26379/service, amqp://user:password@host:5672/vhost, "
        "nats://host:4222, or None (in-process).",
    ),
    "modalkit_django.E008": _error(
        "A backend refuses its `OPTIONS`.", "Fix OPTIONS: see the backend's page in the documentation."
    ),
    "modalkit_django.E009": _error(
        'A module in `MODALKIT["TASK_MODULES"]` cannot be found.',
        "List the dotted paths of the modules that define your TaskIQ consumers.",
    ),
    "modalkit_django.E010": _error(
        "The worker's timers contradict each other: the heartbeat is more than half the lease.",
        "The defaults are a 30 s lease renewed every 10 s.",
    ),
    "modalkit_django.E011": _error(
        "A backend (or the metrics) needs an optional dependency that is not installed.",
        'Install it: pip install "modalkit-django[<extra>]"',
    ),
    "modalkit_django.E012": _error(
        "`deployment_config.secure: true`: there is no Modal web endpoint here to protect.",
        "Remove it, or put your own proxy authentication in front of Django.",
    ),
    "modalkit_django.E013": _error(
        "`deployment_config.allow_concurrent_inputs_handler` is set: there is no Modal web handler here.",
        "Remove it; size the API with your ASGI server and MODALKIT['API']['DATABASE_THREADS'].",
    ),
    "modalkit_django.E014": _error(
        "`queue_config.broker_url` is set: the queue backends take their URLs in `MODALKIT`.",
        "Remove it; give the URL to that backend's OPTIONS (or MODALKIT['BROKER']['URL'] for TaskIQ).",
    ),
    "modalkit_django.E015": _error(
        "`auth_config.ssm_key` is set: the static key is not read from AWS SSM.",
        "Create per-client keys (manage.py modalkit_api_key), or set auth_config.api_key, e.g. through "
        "MODALKIT_APP_SETTINGS__AUTH_CONFIG__API_KEY.",
    ),
    "modalkit_django.E016": _error(
        "A negative `volume_reload_interval_seconds` (ModalKit: reload before every batch; here: never).",
        "Say what you mean: 0 reloads before every batch (ModalKit's default), null never.",
    ),
    "modalkit_django.E017": _error(
        "A memory queue backend can receive results, but the broker runs jobs in worker processes of their own.",
        "Send results through a backend other processes read (SQS, Redis, webhooks, TaskIQ), route them there "
        "with MODALKIT['QUEUE_ROUTES'], or, if you mean it (tests), add 'modalkit_django.E017' to "
        "SILENCED_SYSTEM_CHECKS.",
    ),
    "modalkit_django.W001": _warning(
        "A backend is named by a path that moved; it still works until 1.0.",
        "Use the new path; the old one goes away in 1.0.",
    ),
    "modalkit_django.W002": _warning(
        "The broker's stream or queue is named after ModalKit's default `app_prefix`, which other deployments "
        "would share.",
        "Set app_settings.app_prefix in modalkit.yaml, or MODALKIT['BROKER']['QUEUE_NAME'].",
    ),
    "modalkit_django.W003": _warning(
        "`modalkit.yaml` has keys no section knows (ModalKit ignores them too).",
        "Check their spelling against ModalKit's schema; ModalKit ignores them too.",
    ),
    "modalkit_django.W004": _warning(
        '`MODALKIT["WORKER"]["REQUEUE_AFTER_SECONDS"]` is set, but no longer used.',
        "Remove it: workers claim runnable jobs themselves (WORKER['POLL_INTERVAL_SECONDS']).",
    ),
    "modalkit_django.W005": _warning(
        "`ATOMIC_REQUESTS` is on and a `NinjaAPI` of your own serves the API's router: Django refuses "
        "its async views inside a request transaction (a 500 for every request).",
        "Mount the API with path('', include('modalkit_django.urls')), whose views keep out of request "
        "transactions, or mark your NinjaAPI's views with transaction.non_atomic_requests.",
    ),
    "modalkit_django.W006": _warning(
        "A PostgreSQL database is reached through a connection pooler (PgBouncer) with session state "
        "turned on: a server-side cursor or a prepared statement may land on another server connection.",
        "In transaction pooling, set DISABLE_SERVER_SIDE_CURSORS = True for that database and leave "
        "OPTIONS['prepare_threshold'] unset (Django's default: None). See the PgBouncer how-to.",
    ),
}


def _report(check_id: str, message: str, hint: str | None = None) -> checks.CheckMessage:
    """The message for ``check_id``, with its registered hint unless the mistake gives a better one."""
    check = CHECKS[check_id]
    kind = checks.Error if check.level >= checks.ERROR else checks.Warning
    return kind(message, hint=hint or check.hint, id=check_id)


def one_line(message: checks.CheckMessage) -> str:
    """``message`` as one line of a log: its id, what is wrong, and what to do."""
    where = f"{message.obj}: " if message.obj is not None else ""
    text = message.msg.rstrip()
    if message.hint:
        text = f"{text}{'' if text.endswith(('.', ':', '?', '!')) else '.'} {message.hint}"
    return " ".join(f"{message.id}: {where}{text}".split())


def register() -> None:
    checks.register(check_modalkit, CHECK_TAG)
    checks.register(check_metrics, CHECK_TAG)
    checks.register(check_request_transactions, CHECK_TAG, checks.Tags.urls)
    # Not under CHECK_TAG: `check --tag modalkit` (and /ready) would run it on every database.
    checks.register(check_connection_pooler, checks.Tags.database)


def check_modalkit(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        settings = conf.get_settings()
    except ModalkitImproperlyConfigured as exc:
        return [_report("modalkit_django.E001", str(exc))]
    errors = _check_pipeline()
    try:
        config = conf.get_config()
    except ModalkitImproperlyConfigured as exc:
        hint = f"Set MODALKIT['CONFIG'] or MODALKIT_CONFIG; the smallest modalkit.yaml is:\n{MINIMAL_CONFIG}"
        return [*errors, _report("modalkit_django.E002", str(exc), hint)]
    errors += _check_default_model(config.model_settings.model_entries)
    errors += _check_modalkit_keys(config)
    errors += _check_backends(settings)
    errors += _check_task_modules(settings)
    aliases = {config.app_settings.queue_config.backend, *(alias for _, alias in settings.queue_routes)}
    errors += [
        _report("modalkit_django.E006", f"Queue backend alias {alias!r} is used but not defined in MODALKIT['QUEUES'].")
        for alias in sorted(aliases - set(settings.queues))
    ]
    errors += _check_timers(settings.worker)
    errors += _check_broker(settings.broker, config.app_settings.app_prefix)
    errors += _check_memory_queues(settings, config.app_settings.queue_config.backend)
    if settings.worker.requeue_after_seconds is not None:
        errors.append(_report("modalkit_django.W004", "MODALKIT['WORKER']['REQUEUE_AFTER_SECONDS'] has no effect."))
    return errors


def _check_modalkit_keys(config: ModalkitConfig) -> list[checks.CheckMessage]:
    """ModalKit keys that would change nothing here: refused, never silently ignored."""
    app = config.app_settings
    deployment = app.deployment_config
    interval = deployment.volume_reload_interval_seconds
    refused = [
        (
            "modalkit_django.E012",
            deployment.secure,
            "deployment_config.secure: true asks for Modal proxy auth on ModalKit's "
            "web endpoints; here Django serves the API, authenticated by API keys.",
        ),
        (
            "modalkit_django.E013",
            deployment.allow_concurrent_inputs_handler != 10,
            "deployment_config."
            "allow_concurrent_inputs_handler sizes ModalKit's web handler; here Django serves the API.",
        ),
        (
            "modalkit_django.E014",
            app.queue_config.broker_url != "memory://",
            "queue_config.broker_url is not read: results "
            "go to the backend aliased by queue_config.backend in MODALKIT['QUEUES'].",
        ),
        (
            "modalkit_django.E015",
            app.auth_config.ssm_key is not None,
            "auth_config.ssm_key is not read: the static key "
            "is not fetched from AWS SSM, so no request would be accepted with it.",
        ),
        (
            "modalkit_django.E016",
            interval is not None and interval < 0,
            f"volume_reload_interval_seconds: {interval} reloads "
            "the volumes before every batch in ModalKit but never in the Modal service here.",
        ),
    ]
    errors = [_report(check_id, message) for check_id, bad, message in refused if bad]
    if unknown := unknown_keys(config):
        errors.append(
            _report("modalkit_django.W003", f"modalkit.yaml has keys that are not read: {', '.join(unknown)}.")
        )
    return errors


def _check_pipeline() -> list[checks.CheckMessage]:
    try:
        conf.get_pipeline_class()
    except ModalkitImproperlyConfigured as exc:
        return [_report("modalkit_django.E003", str(exc))]
    return []


def _check_default_model(entries: dict[str, Any]) -> list[checks.CheckMessage]:
    try:
        name = conf.default_model_name()
    except ModalkitImproperlyConfigured as exc:
        message = str(exc)
    else:
        if name in entries:
            return []
        message = f"The default model {name!r} is not in model_settings.model_entries."
    hint = f"Set MODALKIT['DEFAULT_MODEL'] to one of: {', '.join(entries) or '(no entries)'}."
    return [_report("modalkit_django.E004", message, hint)]


def _missing_extra(module: str, where: str) -> checks.CheckMessage:
    extra = EXTRAS.get(module.partition(".")[0])
    install = f'pip install "modalkit-django[{extra}]"' if extra else f"pip install {module}"
    return _report(
        "modalkit_django.E011", f"{where} needs {module!r}, which is not installed.", f"Install it: {install}"
    )


def _check_backends(settings: conf.ModalkitSettings) -> list[checks.CheckMessage]:
    """Import and construct every backend, as the first job would, then close it again."""
    specs: list[tuple[str, conf.BackendSpec, tuple[Any, ...]]] = [
        (f"MODALKIT['QUEUES'][{alias!r}]", spec, (alias,)) for alias, spec in settings.queues.items()
    ]
    specs.append(("MODALKIT['INFERENCE']", settings.inference, ()))
    errors: list[checks.CheckMessage] = []
    for where, spec, args in specs:
        if spec.backend != spec.backend_path:
            moved = f"{where} names {spec.backend!r}, which moved to {spec.backend_path!r}."
            errors.append(_report("modalkit_django.W001", moved))
        try:
            backend_class = import_string(spec.backend_path)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.partition(".")[0] in EXTRAS:
                errors.append(_missing_extra(exc.name, where))
                continue
            errors.append(_unimportable(where, spec, exc))
            continue
        except ImportError as exc:
            errors.append(_unimportable(where, spec, exc))
            continue
        missing = [module for module in getattr(backend_class, "requires", ()) if find_spec(module) is None]
        if missing:
            errors += [_missing_extra(module, where) for module in missing]
            continue
        try:
            spec.build(*args, what=where).close()
        except ModalkitImproperlyConfigured as exc:
            errors.append(_report("modalkit_django.E008", str(exc)))
    return errors


def _unimportable(where: str, spec: conf.BackendSpec, exc: ImportError) -> checks.CheckMessage:
    return _report("modalkit_django.E005", f"{where} names {spec.backend!r}, which cannot be imported: {exc}")


def _check_task_modules(settings: conf.ModalkitSettings) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for module in settings.task_modules:
        try:
            found = find_spec(module) is not None
        except ImportError:  # its parent package is missing
            found = False
        if not found:
            errors.append(
                _report("modalkit_django.E009", f"MODALKIT['TASK_MODULES'] names {module!r}, which cannot be found")
            )
    return errors


def _check_timers(worker: conf.WorkerSettings) -> list[checks.CheckMessage]:
    if worker.heartbeat_seconds * 2 <= worker.lease_seconds:
        return []
    message = (
        f"WORKER['HEARTBEAT_SECONDS'] ({worker.heartbeat_seconds:g}) must be at most half of "
        f"WORKER['LEASE_SECONDS'] ({worker.lease_seconds:g}): a live worker's jobs would be reclaimed."
    )
    return [_report("modalkit_django.E010", message)]


def _check_memory_queues(settings: conf.ModalkitSettings, default_alias: str) -> list[checks.CheckMessage]:
    """A memory backend keeps what it is sent in the sending process: with workers of their
    own, that is a worker, where nobody reads it, and the delivery is marked sent."""
    if settings.broker.url is None or transport_for(settings.broker.url) is None:  # E007 says so
        return []
    # The aliases a queue name can be routed to: the routes' up to a catch-all, else the default too.
    reachable: list[str] = []
    for pattern, alias in settings.queue_routes:
        reachable.append(alias)
        if pattern == "*":
            break
    else:
        reachable.append(default_alias)
    errors = []
    for alias in dict.fromkeys(reachable):
        spec = settings.queues.get(alias)
        try:
            backend_class = import_string(spec.backend_path) if spec else None
        except ImportError:  # E005 or E011 says so
            continue
        if isinstance(backend_class, type) and issubclass(backend_class, MemoryBackend):
            message = (
                f"MODALKIT['QUEUES'][{alias!r}] is a MemoryBackend and MODALKIT['BROKER']['URL'] is set: the "
                "results it is sent would stay in the memory of the worker process that ran the job, and be "
                "marked sent."
            )
            errors.append(_report("modalkit_django.E017", message))
    return errors


def _check_broker(broker: conf.BrokerSettings, app_prefix: str) -> list[checks.CheckMessage]:
    if broker.url is None:
        return []
    transport = transport_for(broker.url)
    if transport is None:
        message = f"MODALKIT['BROKER']['URL'] {broker.url!r} is not a {url_forms()} URL."
        return [_report("modalkit_django.E007", message)]
    missing = [module for module in transport.requires if find_spec(module) is None]
    errors = [_missing_extra(module, "MODALKIT['BROKER']") for module in missing[:1]]
    if broker.queue_name is None and app_prefix == DEFAULT_APP_PREFIX:
        shared = (
            f"The broker's {transport.holds} is named after app_settings.app_prefix, still ModalKit's default "
            f"{DEFAULT_APP_PREFIX!r}: another deployment on the same broker would take this one's wake-ups."
        )
        errors.append(_report("modalkit_django.W002", shared))
    return errors


def check_request_transactions(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """W005: the router on a host's ``NinjaAPI`` (the manual path) under ``ATOMIC_REQUESTS``."""
    from django.db import connections
    from django.urls import URLResolver, get_resolver

    from .api.errors import ANSWERED
    from .api.site import BUILT

    atomic = [alias for alias in connections if connections.settings[alias].get("ATOMIC_REQUESTS")]
    if not atomic:
        return []

    def namespaces(patterns: Sequence[Any]) -> set[str]:
        found: set[str] = set()
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                found |= {pattern.namespace} if pattern.namespace else set()
                found |= namespaces(pattern.url_patterns)
        return found

    try:
        mounted = namespaces(get_resolver().url_patterns)  # imports the URLconf, which builds the APIs
    except Exception:  # Django's own URL checks report it
        return []
    hosts = [api for api in ANSWERED if api not in BUILT and api.urls_namespace in mounted]
    return [
        _report(
            "modalkit_django.W005",
            f"ATOMIC_REQUESTS is on for {', '.join(map(repr, atomic))}, and the NinjaAPI "
            f"{api.urls_namespace!r} serves the API's router: Django answers its requests with a 500.",
        )
        for api in sorted(hosts, key=lambda api: str(api.urls_namespace))
    ]


def check_connection_pooler(
    app_configs: Sequence[AppConfig] | None = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """W006: a PostgreSQL database behind a pooler, with server-side cursors or prepared statements.

    A database check: Django runs it only where a database may be queried (``migrate``,
    ``check --database``). One query per database asks the server the pid of its session:
    through a pooler it is not the pid the connection was told at login (PgBouncer hands
    each client a made-up one).
    """
    from django.db import DatabaseError, connections

    messages = []
    for alias in databases or ():
        connection = connections[alias]
        if connection.vendor != "postgresql":
            continue
        session_state = []
        if not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"):
            session_state.append("DISABLE_SERVER_SIDE_CURSORS is off (a chunked QuerySet read declares a cursor)")
        if connection.settings_dict["OPTIONS"].get("prepare_threshold") is not None:
            session_state.append("OPTIONS['prepare_threshold'] is set (psycopg prepares statements)")
        if not session_state:
            continue
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                [server_pid] = cursor.fetchone()
            pooled = connection.connection.info.backend_pid != server_pid
        except DatabaseError:  # unreachable: the command that needs it says so
            continue
        if pooled:
            messages.append(
                _report(
                    "modalkit_django.W006",
                    f"The database {alias!r} is reached through a connection pooler, and "
                    f"{'; '.join(session_state)}: in transaction pooling these fail at random "
                    "(cursor or prepared statement does not exist).",
                )
            )
    return messages
