"""Running inputs: warm containers, batch collection and the user's methods.

A :class:`Container` is one instance of the user class per parameter set, constructed
and entered once on first use and then kept, like a warm Modal container. Each method
gets a :class:`MethodRunner` that gathers inputs into batches the way ``@modal.batched``
does (up to ``max_batch_size`` inputs or ``wait_ms`` after the first) and runs the sync
user code in a thread pool, so a slow input never blocks the gRPC loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from modal._serialization import deserialize_data_format
from modal.exception import InvalidError
from modal_proto import api_pb2

from .blobs import BlobStore
from .calls import FunctionCallRecord
from .deployment import ClassDeployment, MethodSpec
from .generators import run_generator
from .protos import DataFormat, ResultStatus
from .results import bare_item, failure_item, success_item
from .stats import StatsRecorder

__all__ = ["Container", "Faults", "PendingInput", "Runtime"]

logger = logging.getLogger(__name__)

GenericResult = api_pb2.GenericResult


@dataclass
class Faults:
    """Failure toggles; set from any thread, read on the fake's loop."""

    delay: float = 0.0  # seconds every batch waits before it runs
    reject_auth: bool = False  # every RPC answers UNAUTHENTICATED
    unavailable: bool = False  # every RPC answers UNAVAILABLE
    fail_inputs: ResultStatus | None = None  # a GenericResult status every input ends with


@dataclass
class Runtime:
    """What the runners share."""

    executor: ThreadPoolExecutor
    blobs: BlobStore
    stats: StatsRecorder
    faults: Faults
    parallelism: int  # batches of one method that may run at once (Modal would add containers)


@dataclass
class PendingInput:
    """An input waiting for its batch, and where its output goes."""

    call: FunctionCallRecord
    idx: int
    payload: bytes
    data_format: DataFormat

    def finish(self, item: api_pb2.FunctionGetOutputsItem) -> None:
        self.call.finish(self.idx, item)


class Container:
    """The user-class instance for one parameter set, started on first use and kept."""

    def __init__(
        self, deployment: ClassDeployment, args: tuple[Any, ...], kwargs: dict[str, Any], runtime: Runtime
    ) -> None:
        self.deployment = deployment
        self.runtime = runtime
        self._args = args
        self._kwargs = kwargs
        self._instance: Any = None
        self._started = False
        self._lock = asyncio.Lock()
        self._runners: dict[tuple[str, int, int], MethodRunner] = {}

    async def instance(self) -> Any:
        """The entered instance; a failed start is retried by the next batch, as Modal would."""
        async with self._lock:
            if not self._started:
                loop = asyncio.get_running_loop()
                start = self.deployment.start_instance
                self._instance = await loop.run_in_executor(self.runtime.executor, start, self._args, self._kwargs)
                self._started = True
                self.runtime.stats.add("containers_started")
        return self._instance

    def submit(self, spec: MethodSpec, max_batch_size: int, wait_ms: int, pending: PendingInput) -> None:
        """Queue an input for ``spec``; inputs with the same batching settings batch together."""
        key = (spec.name, max_batch_size, wait_ms)
        if key not in self._runners:
            self._runners[key] = MethodRunner(self, spec, max_batch_size, wait_ms)
        self._runners[key].submit(pending)


def _batched_arguments(spec: MethodSpec, inputs: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> dict[str, list[Any]]:
    """One list per parameter, as Modal calls a ``@modal.batched`` method."""
    names = list(inspect.signature(spec.raw_f).parameters)[1:]  # without self
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for args, kwargs in inputs:
        bound = dict(zip(names, args, strict=False)) | kwargs
        if len(args) > len(names) or set(bound) != set(names):
            raise InvalidError(f"Modal batched function {spec.name} takes {len(names)} arguments: {names}")
        for name in names:
            columns[name].append(bound[name])
    return columns


class MethodRunner:
    """Collects inputs for one method of one container into batches and runs them."""

    def __init__(self, container: Container, spec: MethodSpec, max_batch_size: int, wait_ms: int) -> None:
        self.container = container
        self.spec = spec
        self.max_batch_size = max_batch_size
        self.wait = wait_ms / 1000
        self.runtime = container.runtime
        self._queue: asyncio.Queue[PendingInput] = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.runtime.parallelism)
        self._running: set[asyncio.Task[None]] = set()
        self._collector = asyncio.create_task(self._collect_forever(), name=f"modal-fake-{spec.name}")
        self.loop = asyncio.get_running_loop()

    def submit(self, pending: PendingInput) -> None:
        self._queue.put_nowait(pending)

    async def _collect_forever(self) -> None:
        # Take a slot before gathering: while every slot is busy, inputs pile up and the
        # next batch leaves full, as it would with Modal's containers all busy.
        while True:
            await self._slots.acquire()
            batch = await self._next_batch()
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slots.release()

    async def _next_batch(self) -> list[PendingInput]:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.wait
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self, batch: list[PendingInput]) -> None:
        try:
            await self._run_batch(batch)
        except Exception as exc:  # a bug in the fake: say so, and fail the inputs visibly
            logger.exception("modal fake: running a batch of %s failed", self.spec.name)
            for pending in batch:
                pending.finish(bare_item(GenericResult.GENERIC_STATUS_INTERNAL_FAILURE, f"modal fake bug: {exc!r}"))

    async def _run_batch(self, batch: list[PendingInput]) -> None:
        faults = self.runtime.faults
        if faults.delay > 0:
            await asyncio.sleep(faults.delay)
        batch = self._drop_cancelled(batch)
        if not batch:
            return
        if faults.fail_inputs is not None:
            for pending in batch:
                pending.finish(bare_item(faults.fail_inputs, "modal fake: injected failure"))
            return
        started_at = time.time()
        try:
            instance = await self.container.instance()
        except Exception as exc:
            logger.warning("modal fake: %s failed to start: %r", self.container.deployment.cls_name, exc)
            for pending in batch:
                status = GenericResult.GENERIC_STATUS_INIT_FAILURE
                pending.finish(self._failure(exc, pending, started_at, status))
            return
        self.runtime.stats.batch(len(batch))
        loop = asyncio.get_running_loop()
        items = await loop.run_in_executor(self.runtime.executor, self._execute, instance, batch, started_at)
        for pending, item in zip(batch, items, strict=True):
            pending.finish(item)

    @staticmethod
    def _drop_cancelled(batch: list[PendingInput]) -> list[PendingInput]:
        # Cancelled inputs already have their TERMINATED output (FunctionCallRecord.cancel).
        return [pending for pending in batch if not pending.call.cancelled]

    def _failure(
        self, exc: BaseException, pending: PendingInput, started_at: float, status: ResultStatus
    ) -> api_pb2.FunctionGetOutputsItem:
        invocation_type = pending.call.invocation_type
        return failure_item(exc, pending.data_format, invocation_type, self.runtime.blobs, started_at, status)

    def _execute(
        self, instance: Any, batch: list[PendingInput], started_at: float
    ) -> list[api_pb2.FunctionGetOutputsItem]:
        """Worker thread: decode, call the user method once, encode each input's output."""
        if self.spec.generator:  # never batched: one input
            deployment, blobs = self.container.deployment, self.runtime.blobs
            return [run_generator(deployment, self.spec, instance, batch[0], self.loop, blobs, started_at)]
        failed = GenericResult.GENERIC_STATUS_FAILURE
        try:
            values = self._call(instance, batch)
        except Exception as exc:
            # The user's exception, for every input of the batch (as Modal does).
            logger.info("modal fake: %s.%s raised %r", self.container.deployment.cls_name, self.spec.name, exc)
            return [self._failure(exc, pending, started_at, failed) for pending in batch]
        items = []
        for value, pending in zip(values, batch, strict=True):
            try:
                invocation_type = pending.call.invocation_type
                items.append(success_item(value, pending.data_format, invocation_type, self.runtime.blobs, started_at))
            except Exception as exc:  # e.g. an output pickle cannot handle
                items.append(self._failure(exc, pending, started_at, failed))
        return items

    def _call(self, instance: Any, batch: list[PendingInput]) -> list[Any]:
        inputs = [deserialize_data_format(pending.payload, pending.data_format, None) for pending in batch]
        deployment = self.container.deployment
        if not self.spec.batched:
            (args, kwargs) = inputs[0]
            return [deployment.call_method(instance, self.spec, args, kwargs)]
        output = deployment.call_method(instance, self.spec, (), _batched_arguments(self.spec, inputs))
        if not isinstance(output, list) or len(output) != len(batch):
            raise InvalidError(f"Output of batched function {self.spec.name} must be a list as long as its inputs.")
        return output
