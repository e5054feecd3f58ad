"""The environment a process needs to talk to the fake instead of Modal.

Imports neither ``modal`` nor the fake's server: a pytest plugin must set these
variables before anything imports ``modal``.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Mapping, MutableMapping
from pathlib import Path

__all__ = ["apply_client_env", "client_env", "reserve_socket"]

# modal reads its TOML config file when it is imported; pointing it at a file that does
# not exist keeps a developer's ~/.modal.toml (real tokens, another profile) out of tests.
NO_CONFIG_PATH = Path(tempfile.gettempdir()) / "modal-fake-no-config" / ".modal.toml"

# Any non-empty token works: the fake only checks that one is sent.
TOKEN_ID = "ak-modal-fake"
TOKEN_SECRET = "as-modal-fake"

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def _must_unset(name: str) -> bool:
    # MODAL_IS_REMOTE makes the SDK believe it runs inside a container (it then ignores the
    # config file and expects container credentials); MODAL_OAUTH_* would replace the token.
    return name == "MODAL_IS_REMOTE" or name.startswith("MODAL_OAUTH_")


def _no_proxy(current: str) -> str:
    hosts = [host for host in current.split(",") if host.strip()]
    hosts += [host for host in LOOPBACK_HOSTS if host not in hosts]
    return ",".join(hosts)


def client_env(url: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables that point the ``modal`` SDK at the fake at ``url``.

    Without ``base``: only the variables to set. With ``base`` (e.g. ``os.environ``): a
    complete environment for a subprocess, with ``MODAL_IS_REMOTE`` and ``MODAL_OAUTH_*``
    removed.
    """
    current = base if base is not None else os.environ
    settings = {
        "MODAL_SERVER_URL": url,
        "MODAL_TOKEN_ID": TOKEN_ID,
        "MODAL_TOKEN_SECRET": TOKEN_SECRET,
        "MODAL_CONFIG_PATH": str(NO_CONFIG_PATH),
        "MODAL_DISABLE_API_PROXY": "1",
        # aiohttp (blob uploads) ignores proxies by default; this covers any other HTTP client.
        "NO_PROXY": _no_proxy(current.get("NO_PROXY", "")),
        "no_proxy": _no_proxy(current.get("no_proxy", "")),
    }
    if base is None:
        return settings
    return {**{key: value for key, value in base.items() if not _must_unset(key)}, **settings}


def apply_client_env(url: str, environ: MutableMapping[str, str] = os.environ) -> None:
    """Point this process's ``modal`` SDK at the fake; set before ``modal`` is imported."""
    for name in [name for name in environ if _must_unset(name)]:
        del environ[name]
    environ.update(client_env(url, base=None))


def reserve_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound TCP socket for the server to adopt later, so the URL is known up front.

    Deliberately not listening yet: until the server starts, connections are refused and
    the SDK fails with ``ConnectionError`` (after its ~60 s connect budget). A listening
    socket nobody serves would make SDK calls hang indefinitely instead.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
