"""What a subcommand reports: data for ``--json``, lines for people, and whether it went well."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Outcome", "by_status", "counted"]


@dataclass(frozen=True)
class Outcome:
    data: dict[str, Any]
    lines: list[str]
    # Set when the command must exit non-zero (``health`` with a failed check).
    failure: str | None = None


def by_status(counts: dict[str, int]) -> str:
    """``{"queued": 2, "running": 1}`` → ``"queued 2, running 1"`` (``"none"`` when empty)."""
    return ", ".join(f"{status} {count}" for status, count in sorted(counts.items()) if count) or "none"


def counted(count: int, noun: str, plural: str = "") -> str:
    """``counted(1, "job")`` → ``"1 job"``, ``counted(3, "job")`` → ``"3 jobs"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {plural or noun + 's'}"
