"""pytest plugin: one ``FakeModal`` for the session, serving the example deployment.

Enable it first thing in ``tests/conftest.py``::

    pytest_plugins = ["tests.modal_fake.fixtures"]

``modal`` reads its config file when imported and caches one client (one server URL) per
process. So ``pytest_configure`` reserves the port and points ``MODAL_*`` at it before test
modules are collected; the server itself starts on first use of ``modal_fake``, on that
same socket. Worker subprocesses inherit the variables and reach the same fake.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from .env import apply_client_env, reserve_socket

if TYPE_CHECKING:
    from .server import FakeModal

__all__ = ["SENTIMENT_APP", "SENTIMENT_CLS", "fresh_modal_fake", "modal_fake"]

SENTIMENT_APP = "modalkit-sentiment-dev"
SENTIMENT_CLS = "SentimentService"

_SOCKET = pytest.StashKey[socket.socket]()


def pytest_configure(config: pytest.Config) -> None:
    sock = reserve_socket()
    config.stash[_SOCKET] = sock
    apply_client_env(f"http://127.0.0.1:{sock.getsockname()[1]}")


def pytest_unconfigure(config: pytest.Config) -> None:
    sock = config.stash.get(_SOCKET, None)
    if sock is not None:
        sock.close()  # a no-op if the server already closed it


@pytest.fixture(scope="session")
def modal_fake(pytestconfig: pytest.Config) -> Iterator[FakeModal]:
    """The session's fake, with ``project.modal_app.SentimentService`` deployed.

    Counters and toggles are shared by every test: use ``fresh_modal_fake`` to start
    from zero and have the toggles cleared afterwards.
    """
    from project import modal_app

    from .server import FakeModal

    with FakeModal(sock=pytestconfig.stash[_SOCKET]) as fake:
        fake.register_cls(SENTIMENT_APP, SENTIMENT_CLS, modal_app.SentimentService)
        yield fake


@pytest.fixture
def fresh_modal_fake(modal_fake: FakeModal) -> Iterator[FakeModal]:
    """The session's fake with zeroed counters and cleared toggles, cleared again after."""
    modal_fake.reset()
    yield modal_fake
    modal_fake.reset()
