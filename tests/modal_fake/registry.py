"""Registered classes and the function ids handed to the SDK for them."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from modal_proto import api_pb2

from .deployment import ClassDeployment, MethodSpec, new_id, resolve_user_cls

__all__ = ["Binding", "Deployments"]


@dataclass(frozen=True)
class Binding:
    """What a function id stands for: a class, its constructor arguments, batching overrides."""

    deployment: ClassDeployment
    serialized_params: bytes = b""
    batch_max_size: int = 0  # from .with_batching(); 0 keeps the method's own settings
    batch_wait_ms: int = 0

    def batching(self, spec: MethodSpec) -> tuple[int, int]:
        """``(max_batch_size, wait_ms)`` for ``spec``: ``(1, 0)`` unless it is batched."""
        if spec.batched and self.batch_max_size:
            return self.batch_max_size, self.batch_wait_ms
        return spec.max_batch_size, spec.wait_ms


class Deployments:
    """Thread-safe: tests register classes from their thread while the loop serves them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[tuple[str, str], ClassDeployment] = {}
        self._bindings: dict[str, Binding] = {}
        self._bound_ids: dict[tuple[str, bytes, bytes], str] = {}

    def register(self, app_name: str, cls_name: str, obj: Any) -> ClassDeployment:
        """Deploy ``obj`` (a ``modal.Cls`` or a class) as ``app_name``/``cls_name``, replacing any."""
        deployment = ClassDeployment(app_name, cls_name, resolve_user_cls(obj))
        with self._lock:
            self._forget(app_name, cls_name)
            self._by_name[app_name, cls_name] = deployment
            self._bindings[deployment.function_id] = Binding(deployment)
        return deployment

    def unregister(self, app_name: str, cls_name: str) -> None:
        """Stop serving a class: lookups and calls on its ids answer NOT_FOUND."""
        with self._lock:
            self._forget(app_name, cls_name)

    def clear(self) -> None:
        with self._lock:
            self._by_name.clear()
            self._bindings.clear()
            self._bound_ids.clear()

    def _forget(self, app_name: str, cls_name: str) -> None:
        old = self._by_name.pop((app_name, cls_name), None)
        if old is not None:
            stale = [fid for fid, binding in self._bindings.items() if binding.deployment is old]
            for function_id in stale:
                del self._bindings[function_id]

    def lookup(self, app_name: str, cls_name: str) -> ClassDeployment | None:
        with self._lock:
            return self._by_name.get((app_name, cls_name))

    def binding(self, function_id: str) -> Binding | None:
        with self._lock:
            return self._bindings.get(function_id)

    def bind(self, base: Binding, serialized_params: bytes, options: api_pb2.FunctionOptions) -> str:
        """The id of ``base`` with these parameters and options; the same inputs get the same id."""
        key = (base.deployment.function_id, serialized_params, options.SerializeToString(deterministic=True))
        with self._lock:
            if key not in self._bound_ids or self._bound_ids[key] not in self._bindings:
                bound_id = new_id("fu")
                self._bound_ids[key] = bound_id
                self._bindings[bound_id] = Binding(
                    base.deployment, serialized_params, options.batch_max_size, options.batch_linger_ms
                )
            return self._bound_ids[key]
