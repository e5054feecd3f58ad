"""The gRPC servicer: the few ``modal.client.ModalClient`` RPCs a class call needs.

Implemented (modal 1.6.4): ClassGet, FunctionGet, FunctionBindParams, FunctionMap,
FunctionGetOutputs, FunctionCallGetDataOut (generators' ``.remote_gen()``),
FunctionCallCancel, BlobCreate, BlobGet. Every other RPC of the
generated base class answers UNIMPLEMENTED and is logged as an error, so an SDK that
starts needing something new fails loudly instead of hanging.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import google.protobuf.empty_pb2
from google.protobuf.message import Message
from grpclib import GRPCError, Status
from grpclib.server import Stream
from modal_proto import api_pb2
from modal_proto.api_grpc import ModalClientBase

from .calls import CallRegistry
from .deployment import ClassDeployment
from .execution import Container, PendingInput, Runtime
from .registry import Binding, Deployments

__all__ = ["ModalServicer"]

logger = logging.getLogger(__name__)

# FunctionGetOutputs never holds a poll longer than the SDK's own 55 s refresh.
MAX_POLL_SECONDS = 55.0

Handler = Callable[[Any, Any], Awaitable[Message]]
GrpcHandler = Callable[[Any, Stream[Any, Any]], Coroutine[Any, Any, None]]


def rpc(handler: Handler) -> GrpcHandler:
    """Turn ``handler(self, request) -> response`` into a grpclib unary handler.

    Counts the call, applies the auth/availability toggles, and logs any exception: the
    SDK retries INTERNAL three times, so an unlogged bug would only show up ~0.7 s later
    as an opaque ``ServiceError``.
    """
    name = handler.__name__

    @functools.wraps(handler)
    async def unary(self: ModalServicer, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        self.runtime.stats.rpc(name)
        self.check_access(stream)
        try:
            response = await handler(self, request)
        except (GRPCError, asyncio.CancelledError):
            raise
        except Exception as exc:
            logger.exception("modal fake: %s failed", name)
            raise GRPCError(Status.INTERNAL, f"modal fake: {name} failed: {exc!r}") from exc
        await stream.send_message(response)

    return unary


def _unimplemented(name: str) -> GrpcHandler:
    async def handler(self: ModalServicer, stream: Stream[Any, Any]) -> None:
        self.runtime.stats.rpc(name)
        self.runtime.stats.unimplemented(name)
        logger.error("modal fake: the SDK called %s, which the fake does not implement", name)
        raise GRPCError(Status.UNIMPLEMENTED, f"modal fake does not implement {name}")

    handler.__name__ = name
    return handler


class ModalServicer(ModalClientBase):
    """Answers the SDK from the registered classes; runs on the fake's event loop."""

    def __init__(self, deployments: Deployments, runtime: Runtime, blob_url: Callable[[str], str]) -> None:
        self.deployments = deployments
        self.runtime = runtime
        self.blob_url = blob_url
        self.calls = CallRegistry()
        self.containers: dict[tuple[str, bytes], Container] = {}

    def check_access(self, stream: Stream[Any, Any]) -> None:
        """The toggles that fail every RPC, and the token check a real server makes."""
        faults = self.runtime.faults
        if faults.unavailable:
            raise GRPCError(Status.UNAVAILABLE, "modal fake: service unavailable (injected)")
        if faults.reject_auth or not dict(stream.metadata or {}).get("x-modal-token-id"):
            raise GRPCError(Status.UNAUTHENTICATED, "Invalid token (modal fake)")

    # --- Lookups -----------------------------------------------------------------------

    def _deployment(self, app_name: str, object_tag: str, environment_name: str) -> ClassDeployment:
        deployment = self.deployments.lookup(app_name, object_tag.removesuffix(".*"))
        if deployment is None:
            where = f" in environment '{environment_name}'" if environment_name else ""
            raise GRPCError(Status.NOT_FOUND, f"Could not find '{object_tag}' in app '{app_name}'{where}")
        return deployment

    @rpc
    async def ClassGet(self, request: api_pb2.ClassGetRequest) -> api_pb2.ClassGetResponse:
        deployment = self._deployment(request.app_name, request.object_tag, request.environment_name)
        metadata = api_pb2.ClassHandleMetadata(
            class_function_id=deployment.function_id, class_function_metadata=deployment.function_metadata()
        )
        return api_pb2.ClassGetResponse(class_id=deployment.class_id, handle_metadata=metadata)

    @rpc
    async def FunctionGet(self, request: api_pb2.FunctionGetRequest) -> api_pb2.FunctionGetResponse:
        if not request.object_tag.endswith(".*"):
            # Only classes are served; a plain function lookup is "not deployed".
            raise GRPCError(Status.NOT_FOUND, f"Could not find function '{request.object_tag}'")
        deployment = self._deployment(request.app_name, request.object_tag, request.environment_name)
        return api_pb2.FunctionGetResponse(
            function_id=deployment.function_id,
            handle_metadata=deployment.function_metadata(),
            function=deployment.function_data(),
        )

    def _binding(self, function_id: str) -> Binding:
        binding = self.deployments.binding(function_id)
        if binding is None:
            raise GRPCError(Status.NOT_FOUND, f"Function '{function_id}' not found (not deployed, or stopped)")
        return binding

    @rpc
    async def FunctionBindParams(
        self, request: api_pb2.FunctionBindParamsRequest
    ) -> api_pb2.FunctionBindParamsResponse:
        base = self._binding(request.function_id)
        bound_id = self.deployments.bind(base, request.serialized_params, request.function_options)
        return api_pb2.FunctionBindParamsResponse(
            bound_function_id=bound_id, handle_metadata=base.deployment.function_metadata()
        )

    # --- Calls -------------------------------------------------------------------------

    def _container(self, binding: Binding) -> Container:
        key = (binding.deployment.function_id, binding.serialized_params)
        if key not in self.containers:
            args, kwargs = binding.deployment.decode_params(binding.serialized_params)
            self.containers[key] = Container(binding.deployment, args, kwargs, self.runtime)
        return self.containers[key]

    def _payload(self, function_input: api_pb2.FunctionInput) -> bytes:
        if not function_input.args_blob_id:
            return function_input.args
        data = self.runtime.blobs.get(function_input.args_blob_id)
        if data is None:
            raise GRPCError(Status.INVALID_ARGUMENT, f"blob {function_input.args_blob_id} was never uploaded")
        return data

    @rpc
    async def FunctionMap(self, request: api_pb2.FunctionMapRequest) -> api_pb2.FunctionMapResponse:
        binding = self._binding(request.function_id)
        if request.function_call_type != api_pb2.FUNCTION_CALL_TYPE_UNARY or not request.pipelined_inputs:
            logger.error("modal fake: only unary calls (.remote/.spawn) are supported, not .map()")
            raise GRPCError(Status.UNIMPLEMENTED, "modal fake supports unary calls with pipelined inputs only")
        record = self.calls.create(request.function_call_invocation_type)
        if request.function_call_invocation_type == api_pb2.FUNCTION_CALL_INVOCATION_TYPE_ASYNC:
            self.runtime.stats.record("spawned_calls", record.function_call_id)
        container = self._container(binding)
        answers = []
        for item in request.pipelined_inputs:
            spec = binding.deployment.methods.get(item.input.method_name)
            if spec is None:
                raise GRPCError(Status.INVALID_ARGUMENT, f"no method '{item.input.method_name}'")
            payload = self._payload(item.input)
            input_id = record.add_input(item.idx)
            pending = PendingInput(record, item.idx, payload, item.input.data_format)
            container.submit(spec, *binding.batching(spec), pending)
            self.runtime.stats.add("inputs")
            answers.append(api_pb2.FunctionPutInputsResponseItem(idx=item.idx, input_id=input_id))
        return api_pb2.FunctionMapResponse(function_call_id=record.function_call_id, pipelined_inputs=answers)

    @rpc
    async def FunctionGetOutputs(
        self, request: api_pb2.FunctionGetOutputsRequest
    ) -> api_pb2.FunctionGetOutputsResponse:
        record = self.calls.get(request.function_call_id)
        if record is None:
            if self.calls.is_retired(request.function_call_id):
                # Outputs already collected: the SDK turns this into OutputExpiredError.
                return api_pb2.FunctionGetOutputsResponse(last_entry_id="0-0", num_unfinished_inputs=0)
            raise GRPCError(Status.NOT_FOUND, f"Function call '{request.function_call_id}' not found")
        timeout = min(request.timeout, MAX_POLL_SECONDS)
        outputs = await record.wait_outputs(request.start_idx, max(request.start_idx, request.end_idx), timeout)
        response = api_pb2.FunctionGetOutputsResponse(
            outputs=outputs,
            idxs=[item.idx for item in outputs],
            last_entry_id="0-0",
            num_unfinished_inputs=record.unfinished,
        )
        if request.clear_on_success:
            for item in outputs:
                if item.result.status == api_pb2.GenericResult.GENERIC_STATUS_SUCCESS:
                    record.collect(item.idx)
            self.calls.retire_if_exhausted(record)
        return response

    async def FunctionCallGetDataOut(self, stream: Stream[Any, Any]) -> None:
        """A generator call's values as they come (a server stream); the client closes it
        once the call's ``GeneratorDone`` says it has them all."""
        request = await stream.recv_message()
        self.runtime.stats.rpc("FunctionCallGetDataOut")
        self.check_access(stream)
        record = self.calls.get(request.function_call_id)
        if record is None:
            raise GRPCError(Status.NOT_FOUND, f"Function call '{request.function_call_id}' not found")
        last_index = request.last_index
        # Ends after a quiet poll: the client asks again from its last index.
        while chunks := await record.wait_data(last_index, MAX_POLL_SECONDS):
            for chunk in chunks:
                await stream.send_message(chunk)
            last_index = chunks[-1].index

    @rpc
    async def FunctionCallCancel(self, request: api_pb2.FunctionCallCancelRequest) -> google.protobuf.empty_pb2.Empty:
        self.runtime.stats.record("cancelled_calls", request.function_call_id)
        record = self.calls.get(request.function_call_id)
        if record is not None:
            # A batch already running still finishes, but its output is ignored.
            record.cancel()
        return google.protobuf.empty_pb2.Empty()

    # --- Blobs -------------------------------------------------------------------------

    @rpc
    async def BlobCreate(self, request: api_pb2.BlobCreateRequest) -> api_pb2.BlobCreateResponse:
        blob_id = self.runtime.blobs.create()
        return api_pb2.BlobCreateResponse(
            blob_id=blob_id,
            blob_ids=[blob_id],
            upload_urls=api_pb2.UploadUrlList(items=[self.blob_url(blob_id)]),
        )

    @rpc
    async def BlobGet(self, request: api_pb2.BlobGetRequest) -> api_pb2.BlobGetResponse:
        if self.runtime.blobs.get(request.blob_id) is None:
            raise GRPCError(Status.NOT_FOUND, f"blob {request.blob_id} not found")
        return api_pb2.BlobGetResponse(download_url=self.blob_url(request.blob_id))


def _fill_unimplemented(servicer: type[Any]) -> None:
    # The generated base declares all ~285 RPCs abstract; answer the ones not written above.
    for name in sorted(servicer.__abstractmethods__):
        setattr(servicer, name, _unimplemented(name))
    abc.update_abstractmethods(servicer)


_fill_unimplemented(ModalServicer)
