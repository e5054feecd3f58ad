"""``FakeModal``: the fake control plane and blob server on a background thread.

The unmodified ``modal`` SDK talks to it over loopback (plain HTTP/2 gRPC), and it runs
registered classes in-process as the "deployment". The fake has its own thread and event
loop, so it keeps serving while a test blocks, and user code runs on its worker threads:
it does not see a test's uncommitted database rows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from grpclib.protocol import H2Protocol
from grpclib.server import Server

from .blobs import BlobStore, blob_app
from .execution import Faults, Runtime
from .protos import ResultStatus
from .registry import Deployments
from .servicer import ModalServicer
from .stats import FakeStats, StatsRecorder

__all__ = ["FakeModal"]

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0


class _ClosingServer(Server):
    """grpclib's server, whose ``close()`` also drops the open client connections.

    On Python 3.12 ``asyncio.Server.wait_closed()`` waits for every connection to end, and
    the modal client keeps its HTTP/2 connection open for the life of its process.
    """

    def __init__(self, handlers: list[Any]) -> None:
        super().__init__(handlers)
        self._protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        self._protocols.add(protocol)
        return protocol

    def close(self) -> None:
        super().close()
        for protocol in list(self._protocols):
            connection = getattr(protocol, "connection", None)
            if connection is not None:
                connection.close()


class FakeModal:
    """A loopback fake of Modal's control plane that serves registered classes.

    ``FakeModal().start()`` listens on ``host:port`` (port 0: any free port) or on a bound
    ``sock`` (see :func:`~tests.modal_fake.env.reserve_socket`). Point a client at it with
    :func:`tests.modal_fake.client_env`. Also a context manager.

    Failure toggles (set any time, from any thread):

    - ``delay``: seconds each batch waits before it runs (a slow model).
    - ``reject_auth``: every RPC answers UNAUTHENTICATED (the SDK raises ``AuthError``).
    - ``unavailable``: every RPC answers UNAVAILABLE (the SDK retries, then raises
      ``ServiceError``).
    - ``fail_inputs``: a ``GenericResult`` status every input ends with, e.g.
      ``GENERIC_STATUS_TIMEOUT`` (``FunctionTimeoutError``) or
      ``GENERIC_STATUS_INTERNAL_FAILURE`` (``InternalFailure``).

    Calls: ``expire_call(id)`` and ``forget_call(id)`` make ``FunctionCall.get`` raise
    ``OutputExpiredError`` and ``NotFoundError``; ``stats.spawned_calls`` and
    ``stats.cancelled_calls`` list the calls ``.spawn()`` made and ``cancel()`` named.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        sock: socket.socket | None = None,
        blob_port: int = 0,
        parallelism: int = 8,
        workers: int = 32,
    ) -> None:
        self.host = host
        self._port = port
        self._sock = sock
        self._blob_port = blob_port
        self._faults = Faults()
        self._stats = StatsRecorder()
        self._deployments = Deployments()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modal-fake-worker")
        self._runtime = Runtime(self._executor, BlobStore(), self._stats, self._faults, parallelism)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._servicer: ModalServicer | None = None
        self._ready: Future[None] = Future()

    # --- Lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving; returns once both servers listen."""
        if self._thread is not None:
            raise RuntimeError("FakeModal is already started")
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="modal-fake", daemon=True)
        self._thread.start()
        self._ready.result(timeout=START_TIMEOUT)
        logger.info("modal fake listening on %s (blobs on %s)", self.url, self.blob_base_url)
        return self

    def stop(self) -> None:
        """Stop serving and wait for running user code to finish."""
        if self._thread is None or self._loop is None or self._stop_event is None:
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def _main(self) -> None:
        try:
            grpc_server, blob_runner = await self._serve()
        except BaseException as exc:
            self._executor.shutdown(wait=False)
            self._ready.set_exception(exc)
            raise
        self._ready.set_result(None)
        await self._stop_event.wait()  # type: ignore[union-attr]
        grpc_server.close()
        await grpc_server.wait_closed()
        await blob_runner.cleanup()
        # Let running user code finish while the loop still takes its results.
        shutdown = functools.partial(self._executor.shutdown, wait=True, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, shutdown)

    async def _serve(self) -> tuple[_ClosingServer, web.AppRunner]:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        blob_runner = web.AppRunner(blob_app(self._runtime.blobs, self._stats, self.stats_json), access_log=None)
        await blob_runner.setup()
        await web.TCPSite(blob_runner, self.host, self._blob_port).start()
        self._blob_port = blob_runner.addresses[0][1]
        # Abstract only to mypy: servicer.py fills in the unimplemented RPCs at import.
        servicer = ModalServicer(self._deployments, self._runtime, self.blob_url)  # type: ignore[abstract]
        self._servicer = servicer
        grpc_server = _ClosingServer([servicer])
        if self._sock is not None:
            await grpc_server.start(sock=self._sock)
        else:
            await grpc_server.start(self.host, self._port)
        self._port = grpc_server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return grpc_server, blob_runner

    # --- Addresses ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The gRPC port (known once started, or from the adopted socket)."""
        if self._sock is not None and not self._port:
            return int(self._sock.getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        """``MODAL_SERVER_URL`` for clients: ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def blob_base_url(self) -> str:
        """The blob/stats HTTP server: ``GET {blob_base_url}/stats`` returns the counters."""
        return f"http://{self.host}:{self._blob_port}"

    def blob_url(self, blob_id: str) -> str:
        return f"{self.blob_base_url}/blobs/{blob_id}"

    # --- Deployments -------------------------------------------------------------------

    def register_cls(self, app_name: str, cls_name: str, obj: Any) -> None:
        """Serve ``obj`` (the ``modal.Cls`` that ``@app.cls`` made, or a class) as a deployed class."""
        deployment = self._deployments.register(app_name, cls_name, obj)
        logger.info("modal fake: deployed %s/%s (%s)", app_name, cls_name, ", ".join(deployment.methods))

    def unregister(self, app_name: str, cls_name: str) -> None:
        """Undeploy a class: lookups and calls answer NOT_FOUND."""
        self._deployments.unregister(app_name, cls_name)

    def clear(self) -> None:
        """Undeploy everything."""
        self._deployments.clear()

    # --- Function calls -----------------------------------------------------------------

    def expire_call(self, function_call_id: str) -> None:
        """Drop a call's outputs, as Modal does after a while: ``FunctionCall.get`` raises
        ``OutputExpiredError``."""
        self._on_loop(lambda servicer: servicer.calls.expire(function_call_id))

    def forget_call(self, function_call_id: str) -> None:
        """Drop all trace of a call: ``FunctionCall.get`` raises ``NotFoundError``."""
        self._on_loop(lambda servicer: servicer.calls.forget(function_call_id))

    def _on_loop(self, change: Callable[[ModalServicer], None]) -> None:
        # The call registry belongs to the fake's event loop: change it there.
        if self._loop is None or self._servicer is None:
            raise RuntimeError("FakeModal is not started")
        servicer = self._servicer

        async def run() -> None:
            change(servicer)

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=START_TIMEOUT)

    # --- Toggles and counters ----------------------------------------------------------

    @property
    def delay(self) -> float:
        return self._faults.delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self._faults.delay = seconds

    @property
    def reject_auth(self) -> bool:
        return self._faults.reject_auth

    @reject_auth.setter
    def reject_auth(self, value: bool) -> None:
        self._faults.reject_auth = value

    @property
    def unavailable(self) -> bool:
        return self._faults.unavailable

    @unavailable.setter
    def unavailable(self, value: bool) -> None:
        self._faults.unavailable = value

    @property
    def fail_inputs(self) -> ResultStatus | None:
        return self._faults.fail_inputs

    @fail_inputs.setter
    def fail_inputs(self, status: ResultStatus | None) -> None:
        self._faults.fail_inputs = status

    @property
    def stats(self) -> FakeStats:
        """A snapshot of the counters."""
        return self._stats.snapshot()

    def stats_json(self) -> dict[str, Any]:
        return self._stats.snapshot().as_dict()

    def reset(self) -> None:
        """Zero the counters and clear the toggles; deployments and warm instances stay."""
        self._stats.reset()
        self._faults.delay = 0.0
        self._faults.reject_auth = False
        self._faults.unavailable = False
        self._faults.fail_inputs = None
