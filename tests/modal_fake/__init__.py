"""A loopback fake of Modal's gRPC control plane for the unmodified ``modal`` SDK.

``FakeModal`` serves registered ``@app.cls`` classes in-process; ``client_env`` gives the
environment a client process needs. See ``fixtures.py`` for the pytest plugin and
``python -m tests.modal_fake --help`` for the standalone server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .env import apply_client_env, client_env

if TYPE_CHECKING:
    from .server import FakeModal
    from .stats import FakeStats

__all__ = ["FakeModal", "FakeStats", "apply_client_env", "client_env"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the server imports ``modal``, which reads its config file at import
    # time; the pytest plugin must set the environment before that happens.
    if name == "FakeModal":
        from .server import FakeModal

        return FakeModal
    if name == "FakeStats":
        from .stats import FakeStats

        return FakeStats
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
