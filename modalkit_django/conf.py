"""The ``MODALKIT`` setting and ``modalkit.yaml``, read lazily and cached.

Both caches are cleared when ``MODALKIT`` changes (``override_settings`` in tests),
so nothing here is read at import time.

A complete ``MODALKIT`` setting, with the defaults::

    MODALKIT = {
        "CONFIG": BASE_DIR / "modalkit.yaml",   # or a list; MODALKIT_CONFIG wins
        "PIPELINE": "project.sentiment.SentimentPipeline",
        "DEFAULT_MODEL": None,                  # None: the only model entry
        "INFERENCE": {"BACKEND": "modalkit_django.clients.local.LocalBackend", "OPTIONS": {}},
        "BROKER": {"URL": None, "QUEUE_NAME": None, "OPTIONS": {}},  # None: in-process
        "QUEUES": {"memory": {"BACKEND": "modalkit_django.queues.memory.MemoryBackend"}},
        "QUEUE_ROUTES": [],                     # [("ml_*", "taskiq"), ...], first match wins
        "TASK_MODULES": [],                     # your TaskIQ task/consumer modules, imported by workers
        "DELIVERY": {...},                      # see DeliverySettings
        "WORKER": {...},                        # see WorkerSettings
        "API": {"KEY_CACHE_SECONDS": 5},        # see ApiSettings
        "METRICS": {"ENABLED": False, "TOKEN": None},  # the Prometheus endpoint
        "MESSAGE_FORMAT": "extended",           # "modalkit": ModalKit's messages, no extra fields
    }
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Generic, Literal, Protocol, TypeVar

from django.conf import settings as django_settings
from django.utils.connection import BaseConnectionHandler
from django.utils.module_loading import import_string
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .exceptions import ModalkitImproperlyConfigured, UnknownModel
from .inference.config import ConfigError, ModalkitConfig, config_paths, load_config
from .inference.pipeline import InferencePipeline

__all__ = [
    "MOVED_BACKENDS",
    "BackendHandler",
    "BackendSpec",
    "ModalkitSettings",
    "UnknownBackend",
    "clear_caches",
    "get_config",
    "get_pipeline_class",
    "get_settings",
    "import_task_modules",
    "inference_timeout",
    "resolve_model",
]


class _Setting(BaseModel):
    model_config = ConfigDict(
        alias_generator=str.upper,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        frozen=True,
    )


# Dotted paths that moved, and where to: old settings keep working (check W001 says so).
MOVED_BACKENDS = {
    "modalkit_django.inference.local.LocalBackend": "modalkit_django.clients.local.LocalBackend",
    "modalkit_django.inference.modal_backend.ModalBackend": "modalkit_django.clients.modal.ModalBackend",
}


class BackendSpec(_Setting):
    """A backend named by dotted path, with the keyword arguments it is built with."""

    backend: str = Field(description="The dotted path of the backend class.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the class, as documented with each backend."
    )

    @property
    def backend_path(self) -> str:
        """``BACKEND``, or where it moved to."""
        return MOVED_BACKENDS.get(self.backend, self.backend)

    def build(self, *args: Any, what: str) -> Any:
        """Import ``BACKEND`` and construct it with ``*args`` and ``OPTIONS``.

        ``what`` names the setting in the error, e.g. ``"Queue backend 'sqs'"``.
        """
        try:
            backend_class = import_string(self.backend_path)
        except ImportError as exc:
            raise ModalkitImproperlyConfigured(f"{what}: cannot import {self.backend}: {exc}") from exc
        try:
            return backend_class(*args, **self.options)
        except TypeError as exc:
            raise ModalkitImproperlyConfigured(f"{what}: {self.backend} does not take these OPTIONS: {exc}") from exc


class BrokerSettings(_Setting):
    """The TaskIQ broker that wakes workers."""

    url: str | None = Field(
        default=None,
        description="The broker that wakes workers of their own, chosen by the URL's scheme: "
        "`redis://host:6379/0`, `rediss://…` (TLS), `unix://…` or "
        "`redis+sentinel://[:password@]host:26379[,host:26379…]/service[/db]`: the acknowledged Redis stream "
        "broker (extra `redis`); `amqp://user:password@host:5672/vhost` or `amqps://…` (TLS): RabbitMQ, a quorum "
        "queue (extra `rabbitmq`); `nats://[user:password@]host:4222[,nats://host2:4222…]`: NATS JetStream, a "
        "durable pull consumer on a work-queue stream (extra `nats`). `None` runs jobs inside the web process.",
    )
    # Named after the app by default so that deployments sharing a broker do not share a stream.
    queue_name: str | None = Field(
        default=None,
        description="The Redis stream, the RabbitMQ queue (and its direct exchange), or the NATS JetStream stream "
        "and subject (`.`, `*`, `>`, `/`, `\\` and spaces made `_`). `None`: the Modal app's name "
        "(`app_prefix` + `MODALKIT_APP_POSTFIX`) followed by `:jobs`.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for the broker class: TaskIQ's `InMemoryBroker`, the Redis stream broker "
        "(e.g. `max_in_hand`, `merge`), the RabbitMQ broker (e.g. `queue_type`, `qos`) or the NATS broker "
        "(e.g. `batch`, `ack_wait`).",
    )

    def stream_name(self) -> str:
        return self.queue_name or f"{get_config().app_name}:jobs"


class DeliverySettings(_Setting):
    """How results are sent to their queues and retried."""

    max_attempts: int | None = Field(
        default=None,
        ge=1,
        description="Send attempts before a delivery is dead. `None`: as many as `MAX_AGE_SECONDS` allows "
        "(the age is the budget).",
    )
    backoff_seconds: float = Field(
        default=2.0, gt=0, description="The first retry's delay; each retry doubles it, with jitter."
    )
    max_backoff_seconds: float = Field(
        default=300.0,
        gt=0,
        description="The longest delay between two attempts: a receiver back from an outage gets every result "
        "within about this long.",
    )
    max_age_seconds: float = Field(
        default=86400.0,
        gt=0,
        description="A delivery still unsent this long after its job finished (or its last redelivery) is dead: "
        "no retry is made past it.",
    )
    claim_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long other workers' delivery loops leave a delivery to the worker sending it before "
        "taking it over.",
    )
    # A slow queue must never hold a worker back: the inline attempt is bounded, the rest retried.
    inline_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="The first attempt, made by the worker right after the job finished, gives up after this "
        "long; the delivery is then retried with backoff.",
    )


# Heartbeats a live worker may miss before the admin and the metrics call it dead.
MISSED_BEATS = 3


class WorkerSettings(_Setting):
    """Batching, leases, the sweep and retries of the worker processes."""

    batch_size: int = Field(default=100, ge=1, description="Jobs claimed, inferred and finished together.")
    batches_in_flight: int = Field(
        default=2, ge=1, description="Batches one worker process runs at once; more keeps more model calls in flight."
    )
    # Renewed while the batch runs, so only a dead worker's jobs are reclaimed.
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A running job's lease. Its worker renews it every `HEARTBEAT_SECONDS` while the batch "
        "runs, so a dead worker's jobs are reclaimed about this long after it died.",
    )
    heartbeat_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often a worker renews its leases and beats its heartbeat row; at most half of "
        "`LEASE_SECONDS` (check E010).",
    )
    record_heartbeats: bool = Field(
        default=True, description="Keep this process's `WorkerHeartbeat` row, which the admin lists."
    )
    inference_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="How long one batch's inference may take. `None`: `deployment_config.timeout` of `modalkit.yaml`.",
    )
    sweep_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often a worker offers to run the sweep (jittered by ±20 %); one sweep runs per period "
        "across all workers.",
    )
    poll_interval_seconds: float = Field(
        default=0.5,
        gt=0,
        description="How often an idle worker looks for runnable jobs and due deliveries, whether or not a "
        "wake-up came: a lost wake-up, a job whose `run_after` came, a retry whose backoff ended.",
    )
    # Accepted so that settings written for 0.1 still load (check W004 says so).
    requeue_after_seconds: float | None = Field(
        default=None,
        gt=0,
        description="No longer used: workers claim runnable jobs themselves (see `POLL_INTERVAL_SECONDS`).",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Runs per job, counting retries after transient errors and reclaimed leases."
    )
    retry_backoff_seconds: float = Field(
        default=5.0,
        gt=0,
        description="The delay before a job runs again after a transient error; it doubles with each attempt.",
    )
    sweep_limit: int = Field(default=500, ge=1, description="Rows the sweep handles per kind per pass.")
    database_retry_seconds: float = Field(
        default=60.0, ge=0, description="How long a batch waits for the database to come back before it gives up."
    )
    max_partial_outputs: int = Field(
        default=1000,
        ge=0,
        description="Partial outputs a generator pipeline's job keeps; later ones are not stored.",
    )
    # The job row, its queue message and every API answer carry the result: an unbounded
    # one would be an unbounded statement, message and response.
    max_result_bytes: int | None = Field(
        default=4 * 1024 * 1024,
        ge=1,
        description="The largest model output a job stores (its JSON, in bytes); a larger one fails the job "
        "with a clear error. Return a reference (a URL to object storage) for larger results. `None`: no bound.",
    )

    @property
    def stale_after_seconds(self) -> float:
        """Seconds without a heartbeat after which a worker is called dead: three beats missed."""
        return MISSED_BEATS * self.heartbeat_seconds

    @property
    def wake_ups_in_hand(self) -> int:
        """Wake-ups a worker process holds unacknowledged at most: enough to fill every
        batch in flight twice over (``--max-async-tasks``, and the Redis stream broker's
        count of its entries, merged or not)."""
        return 2 * self.batch_size * self.batches_in_flight


class ApiSettings(_Setting):
    """The HTTP API: keys, limits and the database threads it uses."""

    key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long an API key's lookup is kept in the process: a revoked key works this long at most.",
    )
    database_threads: int = Field(
        default=4,
        ge=1,
        description="Threads (so database connections at most) for the API's synchronous database work, per "
        "server process; keep it within the database pool's size.",
    )
    default_allowed_queues: list[str] = Field(
        default_factory=list,
        description="Queue names or patterns (`acme-*`) a new API key may send results to; `[]`: none until granted.",
    )
    rate_limit_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Submits a minute per key, unless the key sets its own; `None`: no limit. Counted in "
        "`RATE_LIMIT_CACHE`.",
    )
    max_queued_jobs: int | None = Field(
        default=None,
        ge=1,
        description="Jobs a key may have waiting at once, unless the key sets its own; `None`: no limit.",
    )
    # Several web processes must share it, or each counts alone.
    rate_limit_cache: str = Field(
        default="default",
        description="The Django cache alias the per-key limits are counted in; make it a shared one (e.g. "
        "Redis) when several processes serve.",
    )
    # Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) holds 1,000 short messages.
    max_batch_items: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Items per `POST /async/predict/batch` at most; the body must also fit in "
        "`DATA_UPLOAD_MAX_MEMORY_SIZE`.",
    )
    events_max_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="How long `GET /jobs/{job_id}/events` streams before it ends (the client reconnects).",
    )


class MetricsSettings(_Setting):
    """The Prometheus endpoint."""

    # Off, recording costs one cached settings lookup.
    enabled: bool = Field(default=False, description="Serve and record metrics; off, the endpoint is a 404.")
    token: str | None = Field(
        default=None,
        min_length=16,
        description="`None`: anyone who can reach the URL may scrape. Otherwise a scrape needs "
        "`Authorization: Bearer <TOKEN>`.",
    )


class ModalkitSettings(_Setting):
    """The ``MODALKIT`` Django setting."""

    config: Path | list[Path] = Field(
        default=Path("modalkit.yaml"),
        description="The `modalkit.yaml` file, or several (later ones win); the `MODALKIT_CONFIG` environment "
        "variable overrides it.",
    )
    pipeline: str = Field(default="", description="The dotted path of your `InferencePipeline` subclass.")
    default_model: str | None = Field(
        default=None,
        description="The model used when a request names none (`?model_name=`); `None`: the only entry of "
        "`model_entries`.",
    )
    inference: BackendSpec = Field(
        default=BackendSpec(backend="modalkit_django.clients.local.LocalBackend"),
        description="Where the model runs: in the process (`LocalBackend`) or on Modal (`ModalBackend`).",
    )
    broker: BrokerSettings = Field(default=BrokerSettings(), description="The broker that wakes workers.")
    queues: dict[str, BackendSpec] = Field(
        default_factory=lambda: {"memory": BackendSpec(backend="modalkit_django.queues.memory.MemoryBackend")},
        description="Queue backends by alias, as Django's `CACHES`.",
    )
    queue_routes: list[tuple[str, str]] = Field(
        default_factory=list,
        description="`(pattern, alias)` pairs: a queue name goes through the alias of the first shell-style "
        "pattern it matches, else through `queue_config.backend` of `modalkit.yaml`.",
    )
    task_modules: list[str] = Field(
        default_factory=list,
        description="Modules whose TaskIQ tasks (e.g. queue consumers) every worker imports.",
    )
    delivery: DeliverySettings = Field(default=DeliverySettings(), description="Sending results and retrying.")
    worker: WorkerSettings = Field(default=WorkerSettings(), description="The worker processes.")
    api: ApiSettings = Field(default=ApiSettings(), description="The HTTP API.")
    metrics: MetricsSettings = Field(default=MetricsSettings(), description="The Prometheus endpoint.")
    message_format: Literal["extended", "modalkit"] = Field(
        default="extended",
        description="What lands on the queues: ModalKit's messages plus `job_id`, `model_name`, `timestamp` and "
        'more (`"extended"`), or exactly ModalKit\'s (`"modalkit"`), for consumers that forbid extra fields.',
    )


logger = logging.getLogger(__name__)


@functools.cache
def get_settings() -> ModalkitSettings:
    raw = getattr(django_settings, "MODALKIT", {})
    try:
        return ModalkitSettings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ModalkitImproperlyConfigured(f"settings.MODALKIT is invalid: {problems}") from exc


@functools.cache
def get_config() -> ModalkitConfig:
    try:
        return load_config(config_paths(get_settings().config))
    except ConfigError as exc:
        raise ModalkitImproperlyConfigured(f"modalkit.yaml: {exc}") from exc


@functools.cache
def get_pipeline_class() -> type[InferencePipeline]:
    path = get_settings().pipeline
    if not path:
        raise ModalkitImproperlyConfigured("settings.MODALKIT['PIPELINE'] is not set")
    try:
        pipeline = import_string(path)
    except ImportError as exc:
        raise ModalkitImproperlyConfigured(f"cannot import MODALKIT['PIPELINE'] {path!r}: {exc}") from exc
    if not (isinstance(pipeline, type) and issubclass(pipeline, InferencePipeline)):
        raise ModalkitImproperlyConfigured(f"MODALKIT['PIPELINE'] {path!r} is not an InferencePipeline")
    return pipeline


def resolve_model(model_name: str | None) -> str:
    """The model to run: ``model_name`` if configured, else the default."""
    entries = list(get_config().model_settings.model_entries)
    if model_name is None:
        model_name = default_model_name()
        if model_name not in entries:
            # The operators' mistake (check E004), not a model the client asked for.
            raise ModalkitImproperlyConfigured(
                f"MODALKIT['DEFAULT_MODEL'] {model_name!r} is not in modalkit.yaml's model_entries "
                f"({', '.join(entries) or 'none'})"
            )
    if model_name not in entries:
        raise UnknownModel(model_name, entries)
    return model_name


def default_model_name() -> str:
    configured = get_settings().default_model
    if configured:
        return configured
    entries = list(get_config().model_settings.model_entries)
    if len(entries) != 1:
        raise ModalkitImproperlyConfigured(
            f"MODALKIT['DEFAULT_MODEL'] must name a model when modalkit.yaml has {len(entries)} model entries"
        )
    return entries[0]


def inference_timeout() -> float:
    """Seconds one batch's inference may take (``WORKER["INFERENCE_TIMEOUT_SECONDS"]``)."""
    configured = get_settings().worker.inference_timeout_seconds
    return configured or float(get_config().app_settings.deployment_config.timeout)


def import_task_modules() -> None:
    """Import the modules in ``MODALKIT["TASK_MODULES"]``, registering their tasks (e.g. queue consumers)."""
    for module in get_settings().task_modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ModalkitImproperlyConfigured(f"cannot import MODALKIT['TASK_MODULES'] {module!r}: {exc}") from exc


def clear_caches(**kwargs: Any) -> None:
    """``setting_changed`` receiver: forget everything derived from ``MODALKIT``."""
    if kwargs.get("setting", "MODALKIT") != "MODALKIT":
        return
    get_settings.cache_clear()
    get_config.cache_clear()
    get_pipeline_class.cache_clear()


# --- Backends by alias ------------------------------------------------------------------
#
# Queue backends (MODALKIT["QUEUES"]) and the inference client (MODALKIT["INFERENCE"]) are
# held the way Django holds CACHES and TASKS: ``handler[alias]`` builds the backend on first
# use, ``all()`` lists them and ``close_all()`` releases them. They are closed when MODALKIT
# changes (override_settings) and at worker shutdown. Unlike database connections, one
# backend serves the whole process: every thread and event loop shares it (backends keep a
# client per event loop where they need one), so the storage is a plain process-wide
# namespace, not Django's per-context ``Local``.


class Backend(Protocol):
    def close(self) -> None: ...
    async def aclose(self) -> None: ...


B = TypeVar("B", bound=Backend)


class UnknownBackend(ModalkitImproperlyConfigured):
    """An alias that is not configured."""


# BaseConnectionHandler is generic only in django-stubs, not at runtime.
class BackendHandler(BaseConnectionHandler, Generic[B]):  # type: ignore[type-arg]
    """Builds ``BackendSpec``s by alias and keeps them for the life of the process."""

    exception_class = UnknownBackend
    # Name the backends and their setting in errors, e.g. "queue backend", "MODALKIT['QUEUES']".
    kind = "backend"
    setting_label = ""

    def __init__(self) -> None:
        super().__init__()
        self._connections = SimpleNamespace()
        self._lock = threading.Lock()

    @abstractmethod
    def specs(self) -> Mapping[str, BackendSpec]:
        """The configured backends by alias, read from settings on first use."""

    def build(self, alias: str, spec: BackendSpec) -> B:
        backend: B = spec.build(alias, what=f"{self.setting_label}[{alias!r}]")
        return backend

    def configure_settings(self, settings: Any) -> dict[str, Any]:
        return dict(self.specs())

    def create_connection(self, alias: str) -> B:
        return self.build(alias, self.settings[alias])

    def __getitem__(self, alias: str) -> B:
        if alias not in self.settings:
            configured = ", ".join(self.settings)
            raise self.exception_class(f"No {self.kind} {alias!r} in {self.setting_label} (have: {configured})")
        with self._lock:
            backend: B = super().__getitem__(alias)
        return backend

    def built(self) -> list[B]:
        """The backends built so far (without reading the settings, which may be broken)."""
        return list(vars(self._connections).values())

    def close_all(self) -> None:
        """Release every backend built so far (they build their clients again if used)."""
        for backend in self.built():
            try:
                backend.close()
            except Exception:
                logger.warning("Closing %r failed", backend, exc_info=True)

    async def aclose_all(self) -> None:
        """Release every backend built so far, from the event loop whose clients they hold."""
        for backend in self.built():
            try:
                await backend.aclose()
            except Exception:
                logger.warning("Closing %r failed", backend, exc_info=True)

    def reset(self, **kwargs: Any) -> None:
        """``setting_changed`` receiver: close the backends and read the settings again."""
        if kwargs.get("setting", "MODALKIT") != "MODALKIT":
            return
        self.close_all()
        with self._lock:
            self._connections = SimpleNamespace()
            self.__dict__.pop("settings", None)
