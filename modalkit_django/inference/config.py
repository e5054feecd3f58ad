"""``modalkit.yaml``: ModalKit's configuration schema and its loader.

This module runs inside the Modal container as well as in Django, so it must not
import Django. The schema is ModalKit's (``app_settings`` + ``model_settings``) with
the same environment overrides:

- ``MODALKIT_CONFIG=base.yaml,prod.yaml`` lists the files; later ones win.
- ``MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__GPU=A100`` overrides one nested key.
- ``MODALKIT_APP_POSTFIX`` (default ``-dev``) is appended to ``app_prefix`` to name
  the Modal app.

Unknown keys are treated as ModalKit treats them: at the top level they are an error;
inside a section they are ignored, so a ModalKit file loads unchanged, but kept, so
that Django's system check ``modalkit_django.W003`` can name them (a typo such as
``concurency_limit`` would otherwise pass unnoticed, as it does in ModalKit).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "AppSettings",
    "ConfigError",
    "ModalkitConfig",
    "ModelSettings",
    "config_paths",
    "load_config",
    "unknown_keys",
]

CONFIG_ENV = "MODALKIT_CONFIG"
# ModalKit's default app_prefix: a deployment that keeps it shares names with others.
DEFAULT_APP_PREFIX = "modalkit"
APP_POSTFIX_ENV = "MODALKIT_APP_POSTFIX"
DEFAULT_APP_POSTFIX = "-dev"


class ConfigError(ValueError):
    """``modalkit.yaml`` is missing, unreadable or does not match the schema."""


class _Section(BaseModel):
    # Kept, not read: see unknown_keys().
    model_config = ConfigDict(extra="allow", frozen=True)


class MountType(StrEnum):
    FILE = "file"
    DIR = "dir"


class Mount(_Section):
    """A local file or folder added to the image (``deployment_config.mounts``)."""

    local_path: str = Field(description="The file or folder on the machine that deploys.")
    remote_path: str = Field(description="Where it lands in the container.")
    type: MountType = Field(default=MountType.FILE, description="`file` or `dir`.")


class CloudBucketMount(_Section):
    """A cloud storage bucket mounted in the container, as Modal's ``CloudBucketMount``."""

    mount_point: str = Field(description="Where the bucket is mounted in the container.")
    bucket_name: str = Field(description="The bucket.")
    bucket_endpoint_url: str | None = Field(default=None, description="For S3-compatible stores other than AWS.")
    key_prefix: str | None = Field(default=None, description="Mount only the keys under this prefix.")
    secret: str | None = Field(default=None, description="The name of the Modal secret holding the credentials.")
    oidc_auth_role_arn: str | None = Field(default=None, description="An AWS role to assume through OIDC.")
    read_only: bool = Field(default=False, description="Mount read-only.")
    requester_pays: bool = Field(default=False, description="The requester pays for access.")


class BuildConfig(_Section):
    """The container image."""

    image: str = Field(
        default="python:3.12-slim",
        description="A name with a `/` is pulled from its registry as `image:tag`; any other name (ModalKit's "
        "rule) builds Modal's `debian_slim` image.",
    )
    tag: str = Field(default="latest", description="The registry image's tag.")
    workdir: str = Field(default="/root", description="The container's working directory.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables of the image.")
    extra_run_commands: str | list[str] = Field(
        default_factory=list, description="Shell commands run while building the image: one, or a list."
    )


class DeploymentConfig(_Section):
    """The options of the Modal class (``@app.cls``)."""

    region: str | list[str] | None = Field(default=None, description="Modal region(s) to run in.")
    gpu: str | list[str] | None = Field(default=None, description="The GPU type(s), as Modal names them.")
    volumes: dict[str, str] | None = Field(default=None, description="Mount point → Modal volume name.")
    # ModalKit's default (-1) reloads before every batch, which 0 does here; a negative
    # value would disable reloading here, so system check E016 refuses it.
    volume_reload_interval_seconds: int | None = Field(
        default=0,
        description="`0`: reload the volumes before every batch; `N`: before a batch once N seconds have passed since "
        "the last reload; `null`: never. Negative values are refused (E016).",
    )
    concurrency_limit: int | None = Field(default=None, description="Modal's `max_containers`.")
    retries: int = Field(default=1, description="Modal's retries of a failed input.")
    secrets: list[str] = Field(default_factory=list, description="Names of Modal secrets to attach.")
    mounts: list[Mount] = Field(default_factory=list, description="Local files and folders added to the image.")
    container_idle_timeout: int = Field(default=180, description="Modal's `scaledown_window`, in seconds.")
    timeout: int = Field(
        default=300,
        description="Modal's function timeout, in seconds; also bounds a batch's inference unless "
        '`MODALKIT["WORKER"]["INFERENCE_TIMEOUT_SECONDS"]` is set.',
    )
    startup_timeout: int | None = Field(default=None, description="Modal's container startup timeout, in seconds.")
    allow_concurrent_inputs: int = Field(
        default=1, description="Inputs one container takes at once (`@modal.concurrent(max_inputs=…)`)."
    )
    # ModalKit's web handler; there is none here (Django serves the API).
    allow_concurrent_inputs_handler: int = Field(
        default=10, description="ModalKit's web handler; any value other than 10 is refused (E013)."
    )
    secure: bool = Field(default=False, description="ModalKit's proxy auth; `true` is refused (E012).")
    cloud_bucket_mounts: list[CloudBucketMount] = Field(
        default_factory=list, description="Cloud storage buckets mounted in the container."
    )


class BatchConfig(_Section):
    """Modal's dynamic batching (``@modal.batched``)."""

    max_batch_size: int = Field(default=1, ge=1, le=1000, description="Inputs per batch at most.")
    wait_ms: int = Field(
        default=0, ge=0, le=600_000, description="How long a batch waits for more inputs, in milliseconds."
    )


class QueueConfig(_Section):
    """Where results go."""

    backend: str = Field(
        default="memory",
        description='The alias in `MODALKIT["QUEUES"]` used when no `QUEUE_ROUTES` pattern matches.',
    )
    broker_url: str = Field(
        default="memory://",
        description="ModalKit's TaskIQ broker for results; not read here, any other value is refused (E014).",
    )


class AsyncConfig(_Section):
    """How long jobs wait and are kept."""

    timeout: int | None = Field(
        default=3600, ge=1, description="Seconds a job may wait in the queue before it expires; `null`: no limit."
    )
    result_ttl: int | None = Field(default=86400, ge=1, description="Seconds a finished job is kept; `null`: forever.")


class AuthConfig(_Section):
    """A static API key shared by operators, beside the per-user keys."""

    api_key: str | None = Field(default=None, description="The shared key.")
    ssm_key: str | None = Field(
        default=None, description="ModalKit reads the key from AWS SSM; not read here, so refused (E015)."
    )
    auth_header: str = Field(default="x-api-key", description="The header that carries the shared key.")


class AppSettings(_Section):
    """``app_settings``: the Modal app, and how jobs are run and kept."""

    app_prefix: str = Field(
        default=DEFAULT_APP_PREFIX,
        description="Names the Modal app (with `MODALKIT_APP_POSTFIX`) and the broker's stream; keeping "
        "ModalKit's default warns (W002).",
    )
    build_config: BuildConfig = Field(default=BuildConfig(), description="The container image.")
    deployment_config: DeploymentConfig = Field(default=DeploymentConfig(), description="The Modal class's options.")
    batch_config: BatchConfig = Field(default=BatchConfig(), description="Modal's dynamic batching.")
    queue_config: QueueConfig = Field(default=QueueConfig(), description="Where results go.")
    async_config: AsyncConfig = Field(default=AsyncConfig(), description="How long jobs wait and are kept.")
    auth_config: AuthConfig = Field(default=AuthConfig(), description="A shared static API key.")


class ModelSettings(_Section):
    """``model_settings``: the models, passed to your pipeline."""

    local_model_repository_folder: Path = Field(
        default=Path("/root/models"),
        description="Passed to the pipeline as `all_model_data_folder`: where it finds its weights.",
    )
    common: dict[str, Any] = Field(default_factory=dict, description="Passed to every pipeline as `common_settings`.")
    model_entries: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="The models by name; each entry is passed to the pipeline's constructor."
    )


class ModalkitConfig(BaseSettings):
    """The whole of ``modalkit.yaml`` after environment overrides."""

    model_config = SettingsConfigDict(
        env_prefix="MODALKIT_",
        env_nested_delimiter="__",
        case_sensitive=False,
        # As ModalKit's Settings (a pydantic BaseSettings): unknown top-level keys are errors.
        extra="forbid",
        frozen=True,
    )

    app_settings: AppSettings = Field(default=AppSettings(), description="The Modal app and the job service.")
    model_settings: ModelSettings = Field(default=ModelSettings(), description="The models.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The files arrive as init values; environment variables must beat them.
        return (env_settings, init_settings)

    @property
    def app_name(self) -> str:
        """The Modal app name: ``app_prefix`` plus ``MODALKIT_APP_POSTFIX``."""
        postfix = os.environ.get(APP_POSTFIX_ENV, DEFAULT_APP_POSTFIX)
        return f"{self.app_settings.app_prefix}{postfix}"

    def model_entry(self, model_name: str) -> dict[str, Any]:
        """The settings for one model; ``KeyError`` when it is not configured."""
        return self.model_settings.model_entries[model_name]


def unknown_keys(section: BaseModel, path: str = "") -> list[str]:
    """The dotted paths of the keys no section knows (ModalKit ignores them silently)."""
    found = [f"{path}{key}" for key in section.model_extra or {}]
    for name in type(section).model_fields:
        value = getattr(section, name)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            if isinstance(item, _Section):
                where = f"{path}{name}" if index is None else f"{path}{name}[{index}]"
                found += unknown_keys(item, f"{where}.")
    return found


def config_paths(default: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files to read: ``MODALKIT_CONFIG`` when set, else ``default``."""
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    if from_env:
        return [Path(part.strip()) for part in from_env.split(",") if part.strip()]
    if isinstance(default, (str, Path)):
        return [Path(default)]
    return [Path(path) for path in default]


def load_config(paths: Iterable[str | Path]) -> ModalkitConfig:
    """Read and merge the YAML files in order, then apply environment overrides."""
    merged: dict[str, Any] = {}
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if data is None:
            continue
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path} must hold a mapping at the top level")
        _deep_merge(merged, data)
    try:
        return ModalkitConfig(**merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc


def _deep_merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def _describe(exc: ValidationError) -> str:
    problems = (f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors())
    return "; ".join(problems)
