"""Real peers for the queue backend tests, on loopback: an SQS endpoint and a webhook receiver.

A pytest plugin, loaded by ``pytest_plugins`` in tests/conftest.py; test modules
use its fixtures only (importing this module as well would stop pytest from
rewriting its asserts). Besides the peers: ``use_queues`` configures backends as a
project would, ``run_job``/``retry_delivery`` drive the worker's path in this process.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone
from moto.server import ThreadedMotoServer

import modalkit_django
from modalkit_django.models import Job, QueueDelivery
from modalkit_django.queues import queues as queue_backends
from modalkit_django.webhooks import WebhookVerificationError, generate_secret, verify

from . import flow

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Never wait for an instance metadata service that is not there.
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- Running jobs and deliveries in this process ---------------------------------------


@pytest.fixture
def run_job(run_async: Callable[..., Any]) -> Callable[..., Job]:
    """Submit a job and run it through the worker's batch path, first send included."""

    def run(*, text: str = "good", **submit: Any) -> Job:
        job = modalkit_django.submit_job(message={"text": text}, **submit)
        run_async(flow.process_batch, [str(job.id)])
        job.refresh_from_db()
        return job

    return run


@pytest.fixture
def retry_delivery(run_async: Callable[..., Any]) -> Callable[[QueueDelivery], QueueDelivery]:
    """Make a delivery due and run the delivery task on it, as the sweep would."""

    def retry(delivery: QueueDelivery) -> QueueDelivery:
        QueueDelivery.objects.filter(id=delivery.id).update(next_attempt_at=timezone.now())
        run_async(flow.deliver, str(delivery.id))
        delivery.refresh_from_db()
        return delivery

    return retry


@pytest.fixture
def use_queues() -> Iterator[Callable[..., dict[str, Any]]]:
    """Configure queue aliases (and routes) as a project would, for this test.

    Returns the ``MODALKIT`` setting in force. Backends built meanwhile are closed at the end.
    """
    with ExitStack() as stack:

        def use(queues: dict[str, Any], routes: Sequence[tuple[str, str]] = (), **extra: Any) -> dict[str, Any]:
            modalkit = {
                **settings.MODALKIT,
                "QUEUES": {**settings.MODALKIT["QUEUES"], **queues},
                "QUEUE_ROUTES": list(routes),
                **extra,
            }
            stack.enter_context(override_settings(MODALKIT=modalkit))
            stack.callback(queue_backends.close_all)
            return modalkit

        yield use


@pytest.fixture
def worker_env() -> Callable[[dict[str, Any]], dict[str, str]]:
    """The environment that gives a worker subprocess (tests/settings.py) a ``MODALKIT``'s queue settings."""

    def env(modalkit: dict[str, Any]) -> dict[str, str]:
        return {
            "MODALKIT_TEST_QUEUES": json.dumps(modalkit["QUEUES"]),
            "MODALKIT_TEST_QUEUE_ROUTES": json.dumps(modalkit.get("QUEUE_ROUTES", [])),
            "MODALKIT_TEST_TASK_MODULES": json.dumps(modalkit.get("TASK_MODULES", [])),
        }

    return env


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on."""
    return free_port()


# --- SQS: moto's server ---------------------------------------------------------------


class SQSServer:
    """moto's SQS server on a loopback port, in a thread of this process.

    It stops and starts again on the same port. Its queues and messages live in this
    process, so they outlast an outage, as a real endpoint's would.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            # moto's stop() leaves the listening socket open: connections would hang, not fail.
            server._server.server_close()


@dataclass
class SQSPeer:
    """The SQS endpoint as a test sees it: make queues, read back what landed on them."""

    server: SQSServer
    client: Any
    queue_urls: list[str]

    @property
    def options(self) -> dict[str, Any]:
        """SQSBackend options for this endpoint; credentials come from the environment."""
        return {"endpoint_url": self.server.endpoint_url, "region_name": "us-east-1", "max_attempts": 1}

    def queue_name(self, prefix: str = "results", *, fifo: bool = False) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}" + (".fifo" if fifo else "")

    def create_queue(self, name: str) -> str:
        attributes = {"FifoQueue": "true"} if name.endswith(".fifo") else {}
        url: str = self.client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        self.queue_urls.append(url)
        return url

    def url_of(self, name: str) -> str:
        url: str = self.client.get_queue_url(QueueName=name)["QueueUrl"]
        if url not in self.queue_urls:
            self.queue_urls.append(url)
        return url

    def receive_all(self, name: str) -> list[dict[str, Any]]:
        """Every message now visible on the queue, each received (and deleted) once."""
        url = self.url_of(name)
        received: list[dict[str, Any]] = []
        while True:
            batch = self.client.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], WaitTimeSeconds=0
            ).get("Messages", [])
            if not batch:
                return received
            for message in batch:
                self.client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            received += batch


@pytest.fixture(scope="session")
def sqs_server() -> Iterator[SQSServer]:
    server = SQSServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sqs(sqs_server: SQSServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[SQSPeer]:
    """The SQS endpoint, running, with dummy credentials in the environment (boto3's chain)."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    if not sqs_server.running:
        sqs_server.start()
    client = boto3.client("sqs", endpoint_url=sqs_server.endpoint_url, region_name="us-east-1")
    peer = SQSPeer(sqs_server, client, [])
    yield peer
    if not sqs_server.running:  # a test that stopped it and failed before starting it again
        sqs_server.start()
    for url in peer.queue_urls:
        client.delete_queue(QueueUrl=url)
    client.close()


# --- Webhooks: a receiver that verifies -----------------------------------------------


@dataclass
class ReceivedWebhook:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    message: dict[str, Any] | None  # the verified body, or None when verification failed
    error: str = ""
    at: float = field(default_factory=time.monotonic)  # when it arrived


class WebhookReceiver:
    """An HTTP server on loopback that checks each request with ``webhooks.verify``.

    A request whose signature does not verify is answered 401. Otherwise the answer is
    the next status in ``statuses``, then 200 (with an ``x-message-id`` header). Clear
    ``responding`` to make requests hang until it is set again.
    """

    def __init__(self, secret: str | list[str]) -> None:
        self.secret = secret
        self.statuses: deque[int] = deque()
        self.requests: list[ReceivedWebhook] = []
        self.responding = threading.Event()
        self.responding.set()
        self.port = 0
        self.listen()

    def listen(self) -> None:
        """Accept connections (again, on the same port: a receiver back from an outage)."""
        self._server = _Server(("127.0.0.1", self.port), _WebhookHandler)
        self._server.receiver = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop_listening(self) -> None:
        """Close the port: senders' connections are refused, as by a receiver that is down."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        try:
            message: dict[str, Any] | None = verify(body, headers, self.secret)
            error = ""
        except WebhookVerificationError as exc:
            message, error = None, str(exc)
        status = 401 if message is None else (self.statuses.popleft() if self.statuses else 200)
        self.requests.append(ReceivedWebhook(path, headers, body, status, message, error))
        self.responding.wait(timeout=30)
        reply_headers = {"x-message-id": f"received-{len(self.requests)}"} if status == 200 else {}
        return status, reply_headers

    def close(self) -> None:
        self.responding.set()
        self.stop_listening()


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the scale suite's workers send hundreds at once
    daemon_threads = True


class _WebhookHandler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        receiver: WebhookReceiver = self.server.receiver  # type: ignore[attr-defined]
        status, reply_headers = receiver.answer(self.path, headers, body)
        try:
            self.send_response(status)
            for name, value in reply_headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sender gave up waiting (a timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests read ``requests``


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(generate_secret())
    yield receiver
    receiver.close()
