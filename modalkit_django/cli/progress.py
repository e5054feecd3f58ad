"""How long work shows how far it got: a bar on a terminal, a line per step in a log."""

from __future__ import annotations

from typing import Any, Protocol, TextIO

from tqdm import tqdm

__all__ = ["Progress", "ProgressReporter"]


class Progress(Protocol):
    def __call__(self, done: int, total: int, description: str) -> None:
        """``done`` of ``total`` units of ``description`` (e.g. "Purging jobs") are done."""


class ProgressReporter:
    """Draws a tqdm bar on ``stream`` when it is a terminal (or ``bar=True``); otherwise
    writes one line per step, which reads better in a cron job's log than a redrawn bar."""

    def __init__(self, stream: TextIO, *, bar: bool | None = None) -> None:
        self.stream = stream
        self.bar = stream.isatty() if bar is None else bar
        self._tqdm: tqdm[Any] | None = None

    def __call__(self, done: int, total: int, description: str) -> None:
        if not self.bar:
            self.stream.write(f"{description}: {done} of {total}\n")
            return
        if self._tqdm is None:
            self._tqdm = tqdm(total=total, desc=description, file=self.stream, dynamic_ncols=True)
        self._tqdm.update(done - self._tqdm.n)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
