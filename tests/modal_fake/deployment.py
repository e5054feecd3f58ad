"""A registered class, seen the way Modal sees a deployed ``@app.cls``.

Everything here reuses the SDK's own introspection (partial functions, parameter
schema, parameter decoding), so the fake accepts and rejects exactly what a deployed
Modal class would; a class Modal could not construct fails here too.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import modal
from modal._partial_function import (
    _find_callables_for_obj,
    _find_partial_methods_for_user_cls,
    _PartialFunctionFlags,
)
from modal._serialization import deserialize_params, signature_to_parameter_specs
from modal._utils.async_utils import synchronizer
from modal._utils.blob_utils import MAX_ASYNC_OBJECT_SIZE_BYTES, MAX_OBJECT_SIZE_BYTES
from modal.cls import _get_class_constructor_signature, _use_annotation_parameters
from modal_proto import api_pb2

from .protos import DATA_FORMATS

__all__ = ["ClassDeployment", "MethodSpec", "new_id", "resolve_user_cls"]


def new_id(prefix: str) -> str:
    """An object id shaped like Modal's (``fu-…``, ``fc-…``, ``in-…``)."""
    return f"{prefix}-{uuid.uuid4().hex[:22]}"


def resolve_user_cls(obj: Any) -> type:
    """The user's class behind a ``modal.Cls`` (as ``@app.cls`` returns it) or a plain class."""
    if isinstance(obj, type):
        return obj
    implementation = synchronizer._translate_in(obj) if isinstance(obj, modal.Cls) else obj  # type: ignore[no-untyped-call]
    user_cls = getattr(implementation, "_user_cls", None)
    if not isinstance(user_cls, type):
        raise TypeError(f"expected a modal.Cls defined in this process or a class, got {obj!r}")
    return user_cls


@dataclass(frozen=True)
class MethodSpec:
    """One callable method of the class and how Modal would feed it."""

    name: str
    raw_f: Callable[..., Any]
    batched: bool
    max_batch_size: int = 1
    wait_ms: int = 0
    generator: bool = False  # called with .remote_gen(); its values go to the data_out stream


def _method_specs(user_cls: type) -> dict[str, MethodSpec]:
    specs = {}
    partials = _find_partial_methods_for_user_cls(user_cls, _PartialFunctionFlags.interface_flags())
    for name, partial in partials.items():
        assert partial.raw_f is not None
        batched = bool(partial.flags & _PartialFunctionFlags.BATCHED)
        specs[name] = MethodSpec(
            name=name,
            raw_f=partial.raw_f,
            batched=batched,
            max_batch_size=(partial.params.batch_max_size or 1) if batched else 1,
            wait_ms=(partial.params.batch_wait_ms or 0) if batched else 0,
            generator=bool(partial.params.is_generator),
        )
    return specs


def _parameter_info(user_cls: type) -> api_pb2.ClassParameterInfo:
    # Mirrors FunctionInfo.class_parameter_info() at deploy time: dataclass-style
    # modal.parameter() classes get a typed proto schema, anything else pickled (args, kwargs).
    if not _use_annotation_parameters(user_cls):
        return api_pb2.ClassParameterInfo(format=api_pb2.ClassParameterInfo.PARAM_SERIALIZATION_FORMAT_PICKLE)
    return api_pb2.ClassParameterInfo(
        format=api_pb2.ClassParameterInfo.PARAM_SERIALIZATION_FORMAT_PROTO,
        schema=signature_to_parameter_specs(_get_class_constructor_signature(user_cls)),
    )


def _call_sync(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a sync or async user function from a worker thread."""
    result = function(*args, **kwargs)
    if inspect.iscoroutine(result):
        return asyncio.run(result)
    return result


class ClassDeployment:
    """A class "deployed" as ``app_name``/``cls_name``: its ids, metadata and methods."""

    def __init__(self, app_name: str, cls_name: str, user_cls: type) -> None:
        self.app_name = app_name
        self.cls_name = cls_name
        self.user_cls = user_cls
        self.class_id = new_id("cs")
        self.function_id = new_id("fu")
        self.methods = _method_specs(user_cls)
        self.parameter_info = _parameter_info(user_cls)
        if not self.methods:
            raise ValueError(f"{user_cls.__name__} has no @modal.method or @modal.batched method")

    def _method_metadata(self, spec: MethodSpec) -> api_pb2.FunctionHandleMetadata:
        return api_pb2.FunctionHandleMetadata(
            function_name=f"{self.cls_name}.{spec.name}",
            function_type=(
                api_pb2.Function.FUNCTION_TYPE_GENERATOR if spec.generator else api_pb2.Function.FUNCTION_TYPE_FUNCTION
            ),
            is_method=True,
            use_method_name=spec.name,
            class_parameter_info=self.parameter_info,
            max_object_size_bytes=MAX_OBJECT_SIZE_BYTES,
            max_async_object_size_bytes=MAX_ASYNC_OBJECT_SIZE_BYTES,
            supported_input_formats=DATA_FORMATS,
            supported_output_formats=DATA_FORMATS,
        )

    def function_metadata(self) -> api_pb2.FunctionHandleMetadata:
        """Metadata of the class service function ``<Cls>.*``, with one entry per method.

        ``input_plane_url`` stays unset so the SDK uses the control plane (FunctionMap).
        """
        return api_pb2.FunctionHandleMetadata(
            function_name=f"{self.cls_name}.*",
            function_type=api_pb2.Function.FUNCTION_TYPE_FUNCTION,
            class_parameter_info=self.parameter_info,
            method_handle_metadata={name: self._method_metadata(spec) for name, spec in self.methods.items()},
            max_object_size_bytes=MAX_OBJECT_SIZE_BYTES,
            max_async_object_size_bytes=MAX_ASYNC_OBJECT_SIZE_BYTES,
            supported_input_formats=DATA_FORMATS,
            supported_output_formats=DATA_FORMATS,
            base_function_id=self.function_id,
        )

    def function_data(self) -> api_pb2.FunctionData:
        """``FunctionGetResponse.function``: 1.6.x needs at least one ranked function."""
        batched = [spec for spec in self.methods.values() if spec.batched]
        function = api_pb2.Function(
            function_name=f"{self.cls_name}.*",
            app_name=self.app_name,
            is_class=True,
            class_parameter_info=self.parameter_info,
            batch_max_size=batched[0].max_batch_size if batched else 0,
            batch_linger_ms=batched[0].wait_ms if batched else 0,
        )
        return api_pb2.FunctionData(
            function_name=function.function_name,
            is_class=True,
            class_parameter_info=self.parameter_info,
            method_definitions={
                name: api_pb2.MethodDefinition(function_name=f"{self.cls_name}.{name}") for name in self.methods
            },
            method_definitions_set=True,
            ranked_functions=[api_pb2.FunctionData.RankedFunction(rank=0, function=function)],
        )

    def decode_params(self, serialized_params: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The constructor arguments a ``FunctionBindParams`` request carries."""
        if not serialized_params:
            return (), {}
        function_def = api_pb2.Function(class_parameter_info=self.parameter_info)
        # The client argument only resolves Modal objects inside pickles; none are expected.
        args, kwargs = deserialize_params(serialized_params, function_def, None)  # type: ignore[arg-type]
        return tuple(args), dict(kwargs)

    def start_instance(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Construct and enter an instance, as a container does (runs user code: call in a thread)."""
        if _use_annotation_parameters(self.user_cls):
            # modal.parameter() classes: set the attributes, never call __init__.
            bound = _get_class_constructor_signature(self.user_cls).bind(*args, **kwargs)
            bound.apply_defaults()
            instance = self.user_cls.__new__(self.user_cls)  # type: ignore[call-overload]
            instance.__dict__.update(bound.arguments)
        else:
            # What Modal does for anything else, including a modal.parameter() inherited
            # from a base class (Modal only looks at the class's own __dict__).
            instance = self.user_cls(*args, **kwargs)
        if hasattr(instance, "__enter__"):
            instance.__enter__()
        for flag in (_PartialFunctionFlags.ENTER_PRE_SNAPSHOT, _PartialFunctionFlags.ENTER_POST_SNAPSHOT):
            for enter in _find_callables_for_obj(instance, flag).values():
                _call_sync(enter)
        return instance

    def call_method(self, instance: Any, spec: MethodSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run one user method on ``instance`` (in a worker thread)."""
        return _call_sync(spec.raw_f, instance, *args, **kwargs)
