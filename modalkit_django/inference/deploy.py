"""Turn ``modalkit.yaml`` into Modal objects and ``@app.cls(...)`` keyword arguments.

Used by the Modal app module (``modal deploy project/modal_app.py``); never by Django.
ModalKit's pre-1.0 names map onto Modal 1.x: ``concurrency_limit`` → ``max_containers``,
``container_idle_timeout`` → ``scaledown_window``, ``allow_concurrent_inputs`` →
``@modal.concurrent(max_inputs=...)`` (see :func:`concurrent`).

The base image follows ModalKit's rule (``ModalConfig.get_image``): an ``image`` with a
``/`` in it names a registry image, pulled as ``image:tag``; any other name, such as
``python:3.11-slim``, gives Modal's ``debian_slim`` image (ModalKit ignores the name and
the tag then). Write ``docker.io/library/python`` with ``tag: "3.11-slim"`` for Docker
Hub's own image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import modal

from .config import CONFIG_ENV, ModalkitConfig, MountType

__all__ = ["CONTAINER_REQUIREMENTS", "base_image", "build_image", "cls_options", "concurrent"]

# What modalkit_django.inference needs in the container; pipelines add their own.
CONTAINER_REQUIREMENTS = ("pydantic==2.14.4", "pydantic-settings==2.16.3", "PyYAML==6.0.4")


def build_image(
    config: ModalkitConfig,
    *,
    config_files: Sequence[str | Path] = ("modalkit.yaml",),
    python_packages: Sequence[str] = (),
    local_modules: Sequence[str] = ("modalkit_django", "project"),
) -> modal.Image:
    """The container image from ``build_config``: base image, packages, env, commands,
    workdir, ``deployment_config.mounts``, the config files and the project's code."""
    build = config.app_settings.build_config
    image = base_image(build.image, build.tag)
    image = image.pip_install(*CONTAINER_REQUIREMENTS, *python_packages)
    commands = [build.extra_run_commands] if isinstance(build.extra_run_commands, str) else build.extra_run_commands
    if commands:
        image = image.run_commands(*commands)
    remote_configs = [str(PurePosixPath(build.workdir) / Path(path).name) for path in config_files]
    image = image.env({**build.env, CONFIG_ENV: ",".join(remote_configs)}).workdir(build.workdir)
    for mount in config.app_settings.deployment_config.mounts:
        if mount.type == MountType.FILE:
            image = image.add_local_file(mount.local_path, mount.remote_path)
        else:
            image = image.add_local_dir(mount.local_path, remote_path=mount.remote_path)
    for local, remote in zip(config_files, remote_configs, strict=True):
        image = image.add_local_file(Path(local), remote)
    return image.add_local_python_source(*local_modules)


def base_image(name: str, tag: str) -> modal.Image:
    """ModalKit's rule: a registry image when ``name`` has a ``/``, else ``debian_slim``."""
    if name and tag and "/" in name:
        return modal.Image.from_registry(f"{name}:{tag}")
    return modal.Image.debian_slim()


def cls_options(config: ModalkitConfig, *, image: modal.Image | None = None) -> dict[str, Any]:
    """Keyword arguments for ``@app.cls``; unset values are left to Modal's defaults."""
    deployment = config.app_settings.deployment_config
    volumes: dict[str | PurePosixPath, modal.Volume | modal.CloudBucketMount] = {
        mount_point: modal.Volume.from_name(name) for mount_point, name in (deployment.volumes or {}).items()
    }
    for bucket in deployment.cloud_bucket_mounts:
        volumes[bucket.mount_point] = modal.CloudBucketMount(
            bucket_name=bucket.bucket_name,
            bucket_endpoint_url=bucket.bucket_endpoint_url,
            key_prefix=bucket.key_prefix,
            secret=modal.Secret.from_name(bucket.secret) if bucket.secret else None,
            oidc_auth_role_arn=bucket.oidc_auth_role_arn,
            read_only=bucket.read_only,
            requester_pays=bucket.requester_pays,
        )
    options: dict[str, Any] = {
        "image": image,
        "gpu": deployment.gpu,
        "region": deployment.region,
        "secrets": [modal.Secret.from_name(name) for name in deployment.secrets],
        "volumes": volumes,
        "max_containers": deployment.concurrency_limit,
        "scaledown_window": deployment.container_idle_timeout,
        "retries": deployment.retries,
        "timeout": deployment.timeout,
        "startup_timeout": deployment.startup_timeout,
    }
    return {key: value for key, value in options.items() if value is not None}


def concurrent(config: ModalkitConfig) -> Callable[[Any], Any]:
    """``@modal.concurrent`` from ``allow_concurrent_inputs``; a no-op when it is 1."""
    max_inputs = config.app_settings.deployment_config.allow_concurrent_inputs
    if max_inputs <= 1:
        return lambda cls: cls
    return modal.concurrent(max_inputs=max_inputs)
