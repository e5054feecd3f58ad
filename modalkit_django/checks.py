"""System checks: every configuration mistake we can see before the first request.

=====================  ===============================================================
``modalkit_django.E001``  ``settings.MODALKIT`` does not match its schema
``modalkit_django.E002``  ``modalkit.yaml`` is missing, unreadable or invalid
``modalkit_django.E003``  ``MODALKIT["PIPELINE"]`` is unset, unimportable or not a pipeline
``modalkit_django.E004``  the default model is not one of ``model_entries``
``modalkit_django.E005``  a backend class (queue or inference) cannot be imported
``modalkit_django.E006``  a queue alias used by routing is not in ``MODALKIT["QUEUES"]``
``modalkit_django.E007``  the broker URL is not usable
``modalkit_django.E008``  a backend refuses its ``OPTIONS``
``modalkit_django.E009``  a module in ``MODALKIT["TASK_MODULES"]`` cannot be found
``modalkit_django.E010``  the worker's timers contradict each other (heartbeat vs lease)
``modalkit_django.E011``  a backend needs an optional dependency that is not installed
``modalkit_django.E012``  ``deployment_config.secure: true``: no Modal web endpoint here to protect
``modalkit_django.E013``  ``deployment_config.allow_concurrent_inputs_handler``: no Modal web handler here
``modalkit_django.E014``  ``queue_config.broker_url``: the queue backends take their URLs in ``MODALKIT``
``modalkit_django.E015``  ``auth_config.ssm_key``: the static key is not read from AWS SSM
``modalkit_django.E016``  a negative ``volume_reload_interval_seconds`` (ModalKit: every batch; here: never)
``modalkit_django.W001``  a backend is named by a path that moved (it still works until 1.0)
``modalkit_django.W002``  the broker's stream has a name other deployments would share
``modalkit_django.W003``  ``modalkit.yaml`` has keys no section knows (ModalKit ignores them too)
=====================  ===============================================================

Checks have no side effects: they validate backend classes and their options by
building a backend and closing it again (constructors connect nowhere), and look task
modules up without importing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import find_spec
from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.utils.module_loading import import_string

from . import conf
from .exceptions import ModalkitImproperlyConfigured
from .inference.config import DEFAULT_APP_PREFIX, ModalkitConfig, unknown_keys
from .metrics.checks import check_metrics

__all__ = ["EXTRAS", "check_modalkit", "register"]

# The optional dependencies, by the module that is missing, and the extra that brings them.
EXTRAS = {
    "boto3": "sqs",
    "botocore": "sqs",
    "modal": "modal",
    "taskiq_redis": "redis",
    "redis": "redis",
    "httpx": "webhook",
}

MINIMAL_CONFIG = "model_settings:\n  model_entries:\n    my_model: {}"


def register() -> None:
    checks.register(check_modalkit, "modalkit")
    checks.register(check_metrics, "modalkit")


def check_modalkit(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        settings = conf.get_settings()
    except ModalkitImproperlyConfigured as exc:
        return [checks.Error(str(exc), hint="See the MODALKIT section of the README.", id="modalkit_django.E001")]
    errors = _check_pipeline()
    try:
        config = conf.get_config()
    except ModalkitImproperlyConfigured as exc:
        hint = f"Set MODALKIT['CONFIG'] or MODALKIT_CONFIG; the smallest modalkit.yaml is:\n{MINIMAL_CONFIG}"
        return [*errors, checks.Error(str(exc), hint=hint, id="modalkit_django.E002")]
    errors += _check_default_model(config.model_settings.model_entries)
    errors += _check_modalkit_keys(config)
    errors += _check_backends(settings)
    errors += _check_task_modules(settings)
    aliases = {config.app_settings.queue_config.backend, *(alias for _, alias in settings.queue_routes)}
    errors += [
        checks.Error(
            f"Queue backend alias {alias!r} is used but not defined in MODALKIT['QUEUES'].",
            hint="Define it in MODALKIT['QUEUES'], or fix modalkit.yaml queue_config.backend / QUEUE_ROUTES.",
            id="modalkit_django.E006",
        )
        for alias in sorted(aliases - set(settings.queues))
    ]
    errors += _check_timers(settings.worker)
    errors += _check_broker(settings.broker, config.app_settings.app_prefix)
    return errors


def _check_modalkit_keys(config: ModalkitConfig) -> list[checks.CheckMessage]:
    """ModalKit keys that would change nothing here: refused, never silently ignored."""
    app = config.app_settings
    deployment = app.deployment_config
    interval = deployment.volume_reload_interval_seconds
    refused = [
        (
            "E012",
            deployment.secure,
            "deployment_config.secure: true asks for Modal proxy auth on ModalKit's "
            "web endpoints; here Django serves the API, authenticated by API keys.",
            "Remove it, or put your own proxy authentication in front of Django.",
        ),
        (
            "E013",
            deployment.allow_concurrent_inputs_handler != 10,
            "deployment_config."
            "allow_concurrent_inputs_handler sizes ModalKit's web handler; here Django serves the API.",
            "Remove it; size the API with your ASGI server and MODALKIT['API']['DATABASE_THREADS'].",
        ),
        (
            "E014",
            app.queue_config.broker_url != "memory://",
            "queue_config.broker_url is not read: results "
            "go to the backend aliased by queue_config.backend in MODALKIT['QUEUES'].",
            "Remove it; give the URL to that backend's OPTIONS (or MODALKIT['BROKER']['URL'] for TaskIQ).",
        ),
        (
            "E015",
            app.auth_config.ssm_key is not None,
            "auth_config.ssm_key is not read: the static key "
            "is not fetched from AWS SSM, so no request would be accepted with it.",
            "Create per-client keys (manage.py modalkit_api_key), or set auth_config.api_key, e.g. through "
            "MODALKIT_APP_SETTINGS__AUTH_CONFIG__API_KEY.",
        ),
        (
            "E016",
            interval is not None and interval < 0,
            f"volume_reload_interval_seconds: {interval} reloads "
            "the volumes before every batch in ModalKit but never in the Modal service here.",
            "Say what you mean: 0 reloads before every batch (ModalKit's default), null never.",
        ),
    ]
    errors: list[checks.CheckMessage] = [
        checks.Error(message, hint=hint, id=f"modalkit_django.{code}") for code, bad, message, hint in refused if bad
    ]
    if unknown := unknown_keys(config):
        errors.append(
            checks.Warning(
                f"modalkit.yaml has keys that are not read: {', '.join(unknown)}.",
                hint="Check their spelling against ModalKit's schema; ModalKit ignores them too.",
                id="modalkit_django.W003",
            )
        )
    return errors


def _check_pipeline() -> list[checks.CheckMessage]:
    try:
        conf.get_pipeline_class()
    except ModalkitImproperlyConfigured as exc:
        return [
            checks.Error(
                str(exc),
                hint="Set MODALKIT['PIPELINE'] to the dotted path of your InferencePipeline subclass.",
                id="modalkit_django.E003",
            )
        ]
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
    return [
        checks.Error(
            message,
            hint=f"Set MODALKIT['DEFAULT_MODEL'] to one of: {', '.join(entries) or '(no entries)'}.",
            id="modalkit_django.E004",
        )
    ]


def _missing_extra(module: str, where: str) -> checks.CheckMessage:
    extra = EXTRAS.get(module.partition(".")[0])
    install = f'pip install "modalkit-django[{extra}]"' if extra else f"pip install {module}"
    return checks.Error(
        f"{where} needs {module!r}, which is not installed.", hint=f"Install it: {install}", id="modalkit_django.E011"
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
            errors.append(
                checks.Warning(
                    f"{where} names {spec.backend!r}, which moved to {spec.backend_path!r}.",
                    hint="Use the new path; the old one goes away in 1.0.",
                    id="modalkit_django.W001",
                )
            )
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
            errors.append(
                checks.Error(
                    str(exc), hint="Fix OPTIONS: see the backend's section in the README.", id="modalkit_django.E008"
                )
            )
    return errors


def _unimportable(where: str, spec: conf.BackendSpec, exc: ImportError) -> checks.CheckMessage:
    return checks.Error(
        f"{where} names {spec.backend!r}, which cannot be imported: {exc}",
        hint="Check the dotted path.",
        id="modalkit_django.E005",
    )


def _check_task_modules(settings: conf.ModalkitSettings) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for module in settings.task_modules:
        try:
            found = find_spec(module) is not None
        except ImportError:  # its parent package is missing
            found = False
        if not found:
            errors.append(
                checks.Error(
                    f"MODALKIT['TASK_MODULES'] names {module!r}, which cannot be found",
                    hint="List the dotted paths of the modules that define your TaskIQ consumers.",
                    id="modalkit_django.E009",
                )
            )
    return errors


def _check_timers(worker: conf.WorkerSettings) -> list[checks.CheckMessage]:
    if worker.heartbeat_seconds * 2 <= worker.lease_seconds:
        return []
    return [
        checks.Error(
            f"WORKER['HEARTBEAT_SECONDS'] ({worker.heartbeat_seconds:g}) must be at most half of "
            f"WORKER['LEASE_SECONDS'] ({worker.lease_seconds:g}): a live worker's jobs would be reclaimed.",
            hint="The defaults are a 30 s lease renewed every 10 s.",
            id="modalkit_django.E010",
        )
    ]


def _check_broker(broker: conf.BrokerSettings, app_prefix: str) -> list[checks.CheckMessage]:
    if broker.url is None:
        return []
    if not broker.url.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
        return [
            checks.Error(
                f"MODALKIT['BROKER']['URL'] {broker.url!r} is not a Redis URL.",
                hint="Use redis://host:port/db or redis+sentinel://sentinel:26379/service, or None (in-process).",
                id="modalkit_django.E007",
            )
        ]
    errors = [_missing_extra(module, "MODALKIT['BROKER']") for module in ("taskiq_redis",) if find_spec(module) is None]
    if broker.queue_name is None and app_prefix == DEFAULT_APP_PREFIX:
        errors.append(
            checks.Warning(
                f"The broker's stream is named after app_settings.app_prefix, still ModalKit's default "
                f"{DEFAULT_APP_PREFIX!r}: another deployment on the same Redis would take this one's wake-ups.",
                hint="Set app_settings.app_prefix in modalkit.yaml, or MODALKIT['BROKER']['QUEUE_NAME'].",
                id="modalkit_django.W002",
            )
        )
    return errors
