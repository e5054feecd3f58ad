"""What the fake saw, for tests and the benchmark to assert on."""

from __future__ import annotations

import copy
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["FakeStats", "StatsRecorder"]


@dataclass
class FakeStats:
    """A snapshot of the fake's counters (a copy: later calls do not change it)."""

    rpcs: Counter[str] = field(default_factory=Counter)
    inputs: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    blob_uploads: int = 0
    blob_downloads: int = 0
    containers_started: int = 0
    unimplemented: list[str] = field(default_factory=list)
    # Function call ids, in order: those made by ``.spawn()``, and those ``cancel()`` named.
    spawned_calls: list[str] = field(default_factory=list)
    cancelled_calls: list[str] = field(default_factory=list)

    @property
    def function_maps(self) -> int:
        """``FunctionMap`` RPCs: one per ``.remote()``/``.spawn()`` call."""
        return self.rpcs["FunctionMap"]

    @property
    def method_calls(self) -> int:
        """How many times a user method ran (once per batch)."""
        return len(self.batch_sizes)

    @property
    def mean_batch_size(self) -> float:
        """Inputs per user-method call."""
        return sum(self.batch_sizes) / len(self.batch_sizes) if self.batch_sizes else 0.0

    @property
    def calls_per_input(self) -> float:
        """``FunctionMap`` RPCs per input: the benchmark's "Modal calls per job"."""
        return self.function_maps / self.inputs if self.inputs else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, derived values included."""
        return {
            **asdict(self),
            "rpcs": dict(self.rpcs),
            "function_maps": self.function_maps,
            "method_calls": self.method_calls,
            "mean_batch_size": self.mean_batch_size,
            "calls_per_input": self.calls_per_input,
        }


class StatsRecorder:
    """Thread-safe counters: the gRPC loop, the blob server and worker threads all write."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = FakeStats()

    def rpc(self, name: str) -> None:
        with self._lock:
            self._stats.rpcs[name] += 1

    def unimplemented(self, name: str) -> None:
        with self._lock:
            self._stats.unimplemented.append(name)

    def add(self, counter: str, amount: int = 1) -> None:
        """Add to an integer counter such as ``inputs`` or ``blob_uploads``."""
        with self._lock:
            setattr(self._stats, counter, getattr(self._stats, counter) + amount)

    def record(self, calls: str, function_call_id: str) -> None:
        """Append to a list of call ids: ``spawned_calls`` or ``cancelled_calls``."""
        with self._lock:
            getattr(self._stats, calls).append(function_call_id)

    def batch(self, size: int) -> None:
        with self._lock:
            self._stats.batch_sizes.append(size)

    def snapshot(self) -> FakeStats:
        with self._lock:
            return copy.deepcopy(self._stats)

    def reset(self) -> None:
        with self._lock:
            self._stats = FakeStats()
