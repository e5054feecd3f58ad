"""Function calls and their outputs, long-polled by ``FunctionGetOutputs``.

Everything here runs on the fake's event loop thread.
"""

from __future__ import annotations

import asyncio

from modal_proto import api_pb2

from .deployment import new_id
from .protos import InvocationType
from .results import bare_item

__all__ = ["CallRegistry", "FunctionCallRecord"]

GENERIC_STATUS_TERMINATED = api_pb2.GenericResult.GENERIC_STATUS_TERMINATED


class FunctionCallRecord:
    """One function call (``fc-…``): its inputs by index and the outputs not yet collected."""

    def __init__(self, function_call_id: str, invocation_type: InvocationType) -> None:
        self.function_call_id = function_call_id
        self.invocation_type = invocation_type
        self.input_ids: dict[int, str] = {}
        self.cancelled = False
        self._outputs: dict[int, api_pb2.FunctionGetOutputsItem] = {}
        self._collected: set[int] = set()
        # Replaced on every change, so each waiter waits on the event current when it looked.
        self._changed = asyncio.Event()
        # A generator's ``data_out`` stream: DataChunks with indices from 1, as a container sends.
        self.data_out: list[api_pb2.DataChunk] = []

    def cancel(self) -> None:
        """End every input still waiting: it is TERMINATED, as on Modal."""
        self.cancelled = True
        for idx in list(self.input_ids):
            self.finish(idx, bare_item(GENERIC_STATUS_TERMINATED, "Function call was cancelled"))

    def add_input(self, idx: int) -> str:
        input_id = new_id("in")
        self.input_ids[idx] = input_id
        return input_id

    def finish(self, idx: int, item: api_pb2.FunctionGetOutputsItem) -> None:
        """Store the output for input ``idx`` and wake the pollers."""
        if idx in self._outputs or idx in self._collected:
            return  # e.g. an input that finished after its call was cancelled
        item.idx = idx
        item.input_id = self.input_ids[idx]
        self._outputs[idx] = item
        self._changed.set()
        self._changed = asyncio.Event()

    def add_data(self, chunk: api_pb2.DataChunk) -> None:
        """Append one yielded value to the ``data_out`` stream and wake its readers."""
        chunk.index = len(self.data_out) + 1
        self.data_out.append(chunk)
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_data(self, last_index: int, timeout: float) -> list[api_pb2.DataChunk]:
        """The chunks after ``last_index``, waiting up to ``timeout`` seconds for one."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.data_out) <= last_index:
            changed = self._changed
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return []
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return []
        return self.data_out[last_index:]

    @property
    def unfinished(self) -> int:
        """Inputs without an output yet (what ``num_unfinished_inputs`` reports)."""
        return sum(1 for idx in self.input_ids if idx not in self._outputs and idx not in self._collected)

    @property
    def exhausted(self) -> bool:
        """Every output has been collected: nothing left to poll for."""
        return len(self._collected) == len(self.input_ids)

    def _ready(self, start: int, end: int) -> list[api_pb2.FunctionGetOutputsItem]:
        return [self._outputs[idx] for idx in sorted(self._outputs) if start <= idx <= end]

    async def wait_outputs(self, start: int, end: int, timeout: float) -> list[api_pb2.FunctionGetOutputsItem]:
        """Outputs for indices ``start..end``, waiting up to ``timeout`` seconds for one.

        The client cancels this long-poll when it gives up; cancellation just ends the wait.
        """
        deadline = asyncio.get_running_loop().time() + max(timeout, 0.0)
        while True:
            changed = self._changed
            ready = self._ready(start, end)
            remaining = deadline - asyncio.get_running_loop().time()
            if ready or remaining <= 0:
                return ready
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return self._ready(start, end)

    def collect(self, idx: int) -> None:
        """Forget a delivered output (``clear_on_success``): a later poll finds it expired."""
        if self._outputs.pop(idx, None) is not None:
            self._collected.add(idx)


class CallRegistry:
    """Live function calls, plus the ids of calls whose outputs were all collected."""

    def __init__(self) -> None:
        self._calls: dict[str, FunctionCallRecord] = {}
        # Only ids are kept for finished calls: a benchmark makes many thousands of them.
        self._retired: set[str] = set()

    def create(self, invocation_type: InvocationType) -> FunctionCallRecord:
        record = FunctionCallRecord(new_id("fc"), invocation_type)
        self._calls[record.function_call_id] = record
        return record

    def get(self, function_call_id: str) -> FunctionCallRecord | None:
        return self._calls.get(function_call_id)

    def is_retired(self, function_call_id: str) -> bool:
        return function_call_id in self._retired

    def expire(self, function_call_id: str) -> None:
        """Forget the call's outputs, as Modal does after a while: ``get()`` raises OutputExpiredError."""
        self._calls.pop(function_call_id, None)
        self._retired.add(function_call_id)

    def forget(self, function_call_id: str) -> None:
        """Forget the call entirely: ``get()`` raises NotFoundError."""
        self._calls.pop(function_call_id, None)
        self._retired.discard(function_call_id)

    def retire_if_exhausted(self, record: FunctionCallRecord) -> None:
        # A generator's call is kept: its data_out stream may still be read after its output.
        if record.exhausted and not record.data_out:
            self._calls.pop(record.function_call_id, None)
            self._retired.add(record.function_call_id)
