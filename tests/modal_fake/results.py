"""Encode what a user method returned or raised as ``FunctionGetOutputsItem``s.

Mirrors the container side of the SDK (``modal/_runtime/container_io_manager.py``): same
serializers, same size thresholds, same exception payload, so the client decodes the
result, fetches a large one as a blob, or re-raises the exception as its own type.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from modal._serialization import pickle_exception, pickle_traceback, serialize_data_format
from modal._utils.blob_utils import MAX_ASYNC_OBJECT_SIZE_BYTES, MAX_OBJECT_SIZE_BYTES
from modal_proto import api_pb2

from .blobs import BlobStore
from .protos import DATA_FORMATS, DataFormat, InvocationType, ResultStatus

__all__ = ["bare_item", "failure_item", "output_size_limit", "success_item"]

GenericResult = api_pb2.GenericResult
TASK_ID = "ta-modal-fake"


def output_size_limit(invocation_type: InvocationType) -> int:
    """Outputs above this go through a blob: 2 MiB, or 8 KiB for ``.spawn()`` calls."""
    if invocation_type == api_pb2.FUNCTION_CALL_INVOCATION_TYPE_ASYNC:
        return min(MAX_OBJECT_SIZE_BYTES, MAX_ASYNC_OBJECT_SIZE_BYTES)
    return MAX_OBJECT_SIZE_BYTES


def _output_format(input_format: DataFormat) -> DataFormat:
    # Answer in the caller's format (CBOR in, CBOR out), like a deployed function.
    return input_format if input_format in DATA_FORMATS else api_pb2.DATA_FORMAT_PICKLE


def _data_fields(data: bytes, limit: int, blobs: BlobStore) -> dict[str, Any]:
    return {"data_blob_id": blobs.add(data)} if len(data) > limit else {"data": data}


def _item(result: api_pb2.GenericResult, data_format: DataFormat, started_at: float) -> api_pb2.FunctionGetOutputsItem:
    return api_pb2.FunctionGetOutputsItem(
        result=result,
        data_format=data_format,
        task_id=TASK_ID,
        input_started_at=started_at,
        output_created_at=time.time(),
    )


def success_item(
    value: Any, input_format: DataFormat, invocation_type: InvocationType, blobs: BlobStore, started_at: float
) -> api_pb2.FunctionGetOutputsItem:
    """A successful output, offloaded to a blob when it is large."""
    data_format = _output_format(input_format)
    data = serialize_data_format(value, data_format)
    fields = _data_fields(data, output_size_limit(invocation_type), blobs)
    return _item(GenericResult(status=GenericResult.GENERIC_STATUS_SUCCESS, **fields), data_format, started_at)


def failure_item(
    exc: BaseException,
    input_format: DataFormat,
    invocation_type: InvocationType,
    blobs: BlobStore,
    started_at: float,
    status: ResultStatus = GenericResult.GENERIC_STATUS_FAILURE,
) -> api_pb2.FunctionGetOutputsItem:
    """A raised exception; with pickle, the client re-raises it as the same type."""
    data_format = _output_format(input_format)
    result = GenericResult(
        status=status,
        exception=repr(exc)[: MAX_OBJECT_SIZE_BYTES - 1000],
        traceback="".join(traceback.format_exception(exc)),
    )
    if data_format == api_pb2.DATA_FORMAT_PICKLE:
        result.serialized_tb, result.tb_line_cache = pickle_traceback(exc, TASK_ID)
        fields = _data_fields(pickle_exception(exc), output_size_limit(invocation_type), blobs)
        result.MergeFrom(GenericResult(**fields))
    return _item(result, data_format, started_at)


def bare_item(status: ResultStatus, message: str) -> api_pb2.FunctionGetOutputsItem:
    """A result with a status and message only (timeouts, internal failures, cancellation)."""
    return _item(GenericResult(status=status, exception=message), api_pb2.DATA_FORMAT_PICKLE, time.time())
