"""A tiny deployment for exercising the fake itself (its tests, the standalone server).

``Probe(prefix=...).run`` is ``@modal.batched``; each input is a dict that says what to do:
``{"echo": x}`` returns ``x`` (with the prefix if it is a string), ``{"raise": msg}``
fails the batch with :class:`ProbeError`, ``{"random_bytes": n}`` returns ``n`` random
bytes (random, so pickle cannot shrink it below the blob threshold).
"""

# No ``from __future__ import annotations`` here: modal 1.6.4 validates modal.parameter()
# annotations without evaluating them, and a string annotation fails at @app.cls.
import os
from typing import Any

import modal

__all__ = ["ENTERED", "PROBE_APP", "PROBE_CLS", "Probe", "ProbeError", "app"]

PROBE_APP = "modal-fake-probe"
PROBE_CLS = "Probe"
MAX_BATCH_SIZE = 8
WAIT_MS = 50

app = modal.App(PROBE_APP)

# How many instances were entered, by prefix: lets tests see that warm instances are kept.
# Module-level: reading a class attribute through the modal.Cls wrapper returns a copy.
ENTERED: dict[str, int] = {}


class ProbeError(Exception):
    """What ``{"raise": msg}`` raises in the "container"."""


@app.cls()
class Probe:
    prefix: str = modal.parameter(default="")

    @modal.enter()
    def load(self) -> None:
        ENTERED[self.prefix] = ENTERED.get(self.prefix, 0) + 1

    @modal.batched(max_batch_size=MAX_BATCH_SIZE, wait_ms=WAIT_MS)
    def run(self, requests: list[dict[str, Any]]) -> list[Any]:
        return [self._answer(request) for request in requests]

    def _answer(self, request: dict[str, Any]) -> Any:
        if "raise" in request:
            raise ProbeError(request["raise"])
        if "random_bytes" in request:
            return os.urandom(request["random_bytes"])
        value = request.get("echo")
        return f"{self.prefix}{value}" if isinstance(value, str) else value
