"""The loopback Modal fake, driven by the real, unmodified ``modal`` SDK.

Each test calls a deployed class exactly as Django does (``Cls.from_name`` → instance →
``.remote.aio`` / ``.spawn.aio`` / ``FunctionCall.get``) and checks what came back and
what the fake counted. Needs the ``tests.modal_fake.fixtures`` plugin.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import modal
import modal.exception
import pytest
from modal_proto import api_pb2

from project import modal_app
from tests.modal_fake import FakeModal, client_env
from tests.modal_fake.deployment import resolve_user_cls
from tests.modal_fake.fixtures import SENTIMENT_APP, SENTIMENT_CLS
from tests.modal_fake.probe import ENTERED, MAX_BATCH_SIZE, PROBE_APP, PROBE_CLS, Probe, ProbeError

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def run(awaitable: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine function on a fresh event loop, as a sync test can."""

    async def main() -> Any:
        return await awaitable()

    return asyncio.run(main())


@pytest.fixture(scope="module")
def probe(modal_fake: FakeModal) -> Iterator[Any]:
    """The Probe class deployed on the session fake, looked up as a client would."""
    modal_fake.register_cls(PROBE_APP, PROBE_CLS, Probe)
    yield modal.Cls.from_name(PROBE_APP, PROBE_CLS)
    modal_fake.unregister(PROBE_APP, PROBE_CLS)


def test_model_name_is_a_parameter_of_the_deployed_class_itself() -> None:
    # Modal honours a modal.parameter() only when it is declared on the class itself
    # (modal.cls._use_annotation_parameters reads cls.__dict__): ModalService adds it
    # to every subclass, or Modal could not call SentimentService(model_name=...).
    assert "model_name" in vars(resolve_user_cls(modal_app.SentimentService))


def test_sentiment_service_round_trip(modal_fake: FakeModal) -> None:
    service = modal.Cls.from_name(SENTIMENT_APP, SENTIMENT_CLS, environment_name="main")(model_name="sentiment")

    async def calls() -> list[Any]:
        messages = [{"text": "good"}, {"text": "explode"}]
        return await asyncio.gather(*(service.predict_batch.remote.aio(message) for message in messages))

    good, exploded = run(calls)
    assert good["ok"] is True
    assert good["output"]["sentiment"] == "positive"
    assert exploded["ok"] is False  # run_batch turns a pipeline error into an outcome


def test_concurrent_calls_run_in_batches(fresh_modal_fake: FakeModal, probe: Any) -> None:
    ENTERED.clear()
    tagged, plain = probe(prefix="t:"), probe()

    async def calls() -> list[Any]:
        requests = [tagged.run.remote.aio({"echo": str(i)}) for i in range(20)]
        return await asyncio.gather(*requests, plain.run.remote.aio({"echo": "x"}))

    *answers, untagged = run(calls)
    assert answers == [f"t:{i}" for i in range(20)]
    assert untagged == "x"
    stats = fresh_modal_fake.stats
    assert stats.inputs == stats.function_maps == 21
    assert sum(stats.batch_sizes) == 21
    assert stats.method_calls < 20
    assert max(stats.batch_sizes) == MAX_BATCH_SIZE
    # One warm instance per parameter set, entered once.
    assert ENTERED == {"t:": 1, "": 1}


def test_with_batching_overrides_the_batch_size(fresh_modal_fake: FakeModal, probe: Any) -> None:
    instance = probe.with_batching(max_batch_size=2, wait_ms=200)(prefix="pair-")

    async def calls() -> list[Any]:
        return await asyncio.gather(*(instance.run.remote.aio({"echo": str(i)}) for i in range(4)))

    assert run(calls) == [f"pair-{i}" for i in range(4)]
    assert fresh_modal_fake.stats.batch_sizes == [2, 2]


def test_user_exception_comes_back_as_its_own_type(probe: Any) -> None:
    with pytest.raises(ProbeError, match="kaboom"):
        run(lambda: probe().run.remote.aio({"raise": "kaboom"}))


@pytest.mark.parametrize(("app_name", "cls_name"), [(PROBE_APP, "Missing"), ("no-such-app", PROBE_CLS)])
def test_not_deployed_raises_not_found(probe: Any, app_name: str, cls_name: str) -> None:
    missing = modal.Cls.from_name(app_name, cls_name)
    with pytest.raises(modal.exception.NotFoundError, match="Lookup failed"):
        run(lambda: missing().run.remote.aio({"echo": 1}))


def test_rejected_credentials_raise_auth_error(fresh_modal_fake: FakeModal, probe: Any) -> None:
    fresh_modal_fake.reject_auth = True
    started = time.monotonic()
    with pytest.raises(modal.exception.AuthError):
        run(lambda: probe().run.remote.aio({"echo": 1}))
    assert time.monotonic() - started < 1  # not retried


def test_unavailable_service_raises_service_error_after_retries(fresh_modal_fake: FakeModal, probe: Any) -> None:
    fresh_modal_fake.unavailable = True
    started = time.monotonic()
    with pytest.raises(modal.exception.ServiceError):
        run(lambda: probe().run.remote.aio({"echo": 1}))
    assert 0.5 < time.monotonic() - started < 3  # three retries: 0.1 + 0.2 + 0.4 s
    assert fresh_modal_fake.stats.rpcs["FunctionMap"] == 4


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (api_pb2.GenericResult.GENERIC_STATUS_TIMEOUT, modal.exception.FunctionTimeoutError),
        (api_pb2.GenericResult.GENERIC_STATUS_INTERNAL_FAILURE, modal.exception.InternalFailure),
    ],
)
def test_injected_input_failures(fresh_modal_fake: FakeModal, probe: Any, status: int, error: type[Exception]) -> None:
    fresh_modal_fake.fail_inputs = status
    with pytest.raises(error):
        run(lambda: probe().run.remote.aio({"echo": 1}))


def test_abandoned_slow_call_does_not_break_the_fake(fresh_modal_fake: FakeModal, probe: Any) -> None:
    fresh_modal_fake.delay = 1.0
    with pytest.raises(TimeoutError):
        run(lambda: asyncio.wait_for(probe().run.remote.aio({"echo": "slow"}), 0.2))
    fresh_modal_fake.delay = 0
    assert run(lambda: probe().run.remote.aio({"echo": "fast"})) == "fast"


def test_large_input_round_trips_through_blobs(fresh_modal_fake: FakeModal, probe: Any) -> None:
    payload = os.urandom(3 * MiB)
    assert run(lambda: probe().run.remote.aio({"echo": payload})) == payload
    stats = fresh_modal_fake.stats
    assert (stats.blob_uploads, stats.rpcs["BlobCreate"]) == (1, 1)
    assert (stats.blob_downloads, stats.rpcs["BlobGet"]) == (1, 1)  # the echo is large too


def test_large_output_is_downloaded_from_a_blob(fresh_modal_fake: FakeModal, probe: Any) -> None:
    output = run(lambda: probe().run.remote.aio({"random_bytes": 3 * MiB}))
    assert len(output) == 3 * MiB
    stats = fresh_modal_fake.stats
    assert (stats.blob_uploads, stats.blob_downloads) == (0, 1)


def test_spawn_then_get_by_id(fresh_modal_fake: FakeModal, probe: Any) -> None:
    async def spawn_and_get() -> tuple[Any, Any]:
        small = await probe().run.spawn.aio({"echo": "later"})
        large = await probe().run.spawn.aio({"echo": os.urandom(10_000)})  # over 8 KiB: a blob
        fetch = modal.FunctionCall.from_id
        return await fetch(small.object_id).get.aio(timeout=5), await fetch(large.object_id).get.aio(timeout=5)

    small, large = run(spawn_and_get)
    assert small == "later"
    assert len(large) == 10_000
    assert fresh_modal_fake.stats.blob_uploads == 1


def test_pending_spawn_times_out_then_cancels(fresh_modal_fake: FakeModal, probe: Any) -> None:
    fresh_modal_fake.delay = 5.0

    async def spawn_wait_cancel() -> None:
        call = await probe().run.spawn.aio({"echo": 1})
        with pytest.raises(TimeoutError):
            await modal.FunctionCall.from_id(call.object_id).get.aio(timeout=0.2)
        await call.cancel.aio()
        with pytest.raises(modal.exception.RemoteError, match="cancelled"):
            await modal.FunctionCall.from_id(call.object_id).get.aio(timeout=5)

    run(spawn_wait_cancel)


def test_blocking_calls_from_threads(probe: Any) -> None:
    instance = probe(prefix="thread-")
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda i: instance.run.remote({"echo": str(i)}), range(8)))
    assert answers == [f"thread-{i}" for i in range(8)]


def test_unimplemented_rpcs_fail_loudly(fresh_modal_fake: FakeModal, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(modal.exception.UnimplementedError):
        run(lambda: modal.Dict.from_name("modal-fake-dict").get.aio("key"))
    unimplemented = fresh_modal_fake.stats.unimplemented
    assert unimplemented
    assert any(name in record.getMessage() for name in unimplemented for record in caplog.records)


def test_stats_over_http(fresh_modal_fake: FakeModal, probe: Any) -> None:
    run(lambda: probe().run.remote.aio({"echo": 1}))
    with urllib.request.urlopen(f"{fresh_modal_fake.blob_base_url}/stats") as response:
        stats = json.load(response)
    assert stats["function_maps"] == stats["inputs"] == 1
    assert stats["calls_per_input"] == 1.0
    reset = urllib.request.Request(f"{fresh_modal_fake.blob_base_url}/reset", method="POST")
    with urllib.request.urlopen(reset) as response:
        assert json.load(response)["inputs"] == 0


def test_standalone_server(tmp_path: Path) -> None:
    """``python -m tests.modal_fake`` serves a separate client process, then reports stats."""
    stats_file = tmp_path / "stats.json"
    registration = f"{PROBE_APP}:{PROBE_CLS}=tests.modal_fake.probe:Probe"
    command = [sys.executable, "-m", "tests.modal_fake", "--register", registration, "--stats-file", str(stats_file)]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None
            url = server.stdout.readline().removeprefix("LISTENING ").strip()
            client = (
                "import modal; "
                f"print(modal.Cls.from_name({PROBE_APP!r}, {PROBE_CLS!r})(prefix='p').run.remote({{'echo': 'q'}}))"
            )
            answer = subprocess.run(
                [sys.executable, "-c", client], env=client_env(url, base=os.environ), capture_output=True, text=True
            )
            assert answer.stdout.strip() == "pq", answer.stderr
        finally:
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=10) == 0
    assert json.loads(stats_file.read_text())["inputs"] == 1
