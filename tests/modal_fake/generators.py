"""Generator methods (``.remote_gen()``): each yielded value goes to the call's ``data_out``.

As a container does (``modal/_container_entrypoint.py``): the values are serialized in the
input's format and appended to the call's data stream as ``DataChunk``s numbered from 1,
which the client reads with ``FunctionCallGetDataOut``; then the input's output is a
``GeneratorDone`` carrying how many there were, which tells the client the stream is whole.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from modal._serialization import deserialize_data_format, serialize_data_format
from modal_proto import api_pb2

from .blobs import BlobStore
from .deployment import ClassDeployment, MethodSpec
from .protos import DATA_FORMATS
from .results import TASK_ID, failure_item

__all__ = ["run_generator"]


def run_generator(
    deployment: ClassDeployment,
    spec: MethodSpec,
    instance: Any,
    pending: Any,
    loop: asyncio.AbstractEventLoop,
    blobs: BlobStore,
    started_at: float,
) -> api_pb2.FunctionGetOutputsItem:
    """Worker thread: run one generator input, streaming its values; return its final output."""
    data_format = pending.data_format if pending.data_format in DATA_FORMATS else api_pb2.DATA_FORMAT_PICKLE
    count = 0
    try:
        args, kwargs = deserialize_data_format(pending.payload, pending.data_format, None)
        for value in deployment.call_method(instance, spec, args, kwargs):
            chunk = api_pb2.DataChunk(data_format=data_format, data=serialize_data_format(value, data_format))
            # Scheduled before the output below is stored: the client sees every value first.
            loop.call_soon_threadsafe(pending.call.add_data, chunk)
            count += 1
    except Exception as exc:
        return failure_item(exc, pending.data_format, pending.call.invocation_type, blobs, started_at)
    done = serialize_data_format(api_pb2.GeneratorDone(items_total=count), api_pb2.DATA_FORMAT_GENERATOR_DONE)
    return api_pb2.FunctionGetOutputsItem(
        result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS, data=done),
        data_format=api_pb2.DATA_FORMAT_GENERATOR_DONE,
        task_id=TASK_ID,
        input_started_at=started_at,
        output_created_at=time.time(),
    )
