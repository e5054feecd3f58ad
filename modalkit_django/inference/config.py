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
    local_path: str
    remote_path: str
    type: MountType = MountType.FILE


class CloudBucketMount(_Section):
    mount_point: str
    bucket_name: str
    bucket_endpoint_url: str | None = None
    key_prefix: str | None = None
    secret: str | None = None
    oidc_auth_role_arn: str | None = None
    read_only: bool = False
    requester_pays: bool = False


class BuildConfig(_Section):
    image: str = "python:3.12-slim"
    tag: str = "latest"
    workdir: str = "/root"
    env: dict[str, str] = Field(default_factory=dict)
    extra_run_commands: str | list[str] = Field(default_factory=list)


class DeploymentConfig(_Section):
    region: str | list[str] | None = None
    gpu: str | list[str] | None = None
    # mount point -> Modal volume name, as in ModalKit
    volumes: dict[str, str] | None = None
    # None: never. ModalKit's default (-1) reloads before every batch, which 0 does here;
    # a negative value disables reloading here, so system check E016 refuses it.
    volume_reload_interval_seconds: int | None = 0
    concurrency_limit: int | None = None
    retries: int = 1
    secrets: list[str] = Field(default_factory=list)
    mounts: list[Mount] = Field(default_factory=list)
    container_idle_timeout: int = 180
    timeout: int = 300
    startup_timeout: int | None = None
    allow_concurrent_inputs: int = 1
    # ModalKit's web handler; there is none here (Django serves the API): E013 and E012
    # refuse values other than these defaults.
    allow_concurrent_inputs_handler: int = 10
    secure: bool = False
    cloud_bucket_mounts: list[CloudBucketMount] = Field(default_factory=list)


class BatchConfig(_Section):
    max_batch_size: int = Field(default=1, ge=1, le=1000)
    wait_ms: int = Field(default=0, ge=0, le=600_000)


class QueueConfig(_Section):
    # The alias in ``MODALKIT["QUEUES"]`` used when no route matches.
    backend: str = "memory"
    # ModalKit's TaskIQ broker for results; not read here (E014 refuses another value).
    broker_url: str = "memory://"


class AsyncConfig(_Section):
    # Seconds a job may wait in the queue before it is expired; None: no limit.
    timeout: int | None = Field(default=3600, ge=1)
    # Seconds a finished job is kept; None: forever.
    result_ttl: int | None = Field(default=86400, ge=1)


class AuthConfig(_Section):
    api_key: str | None = None
    # ModalKit reads the key from AWS SSM; not read here (E015 refuses it).
    ssm_key: str | None = None
    auth_header: str = "x-api-key"


class AppSettings(_Section):
    app_prefix: str = DEFAULT_APP_PREFIX
    build_config: BuildConfig = BuildConfig()
    deployment_config: DeploymentConfig = DeploymentConfig()
    batch_config: BatchConfig = BatchConfig()
    queue_config: QueueConfig = QueueConfig()
    async_config: AsyncConfig = AsyncConfig()
    auth_config: AuthConfig = AuthConfig()


class ModelSettings(_Section):
    local_model_repository_folder: Path = Path("/root/models")
    common: dict[str, Any] = Field(default_factory=dict)
    model_entries: dict[str, dict[str, Any]] = Field(default_factory=dict)


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

    app_settings: AppSettings = AppSettings()
    model_settings: ModelSettings = ModelSettings()

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
