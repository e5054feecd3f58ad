"""What the database can store: JSON and text that PostgreSQL will not refuse.

Python's ``json`` happily produces ``NaN``/``Infinity``, keeps NUL characters and lone
surrogates, and nests as deep as memory allows; PostgreSQL's ``jsonb`` and ``text``
refuse the first three (failing the whole transaction), and a deep enough value makes
any recursive walk raise ``RecursionError``. Everything a client or a model sends is
checked here first, iteratively, so a bad value is a clear 4xx or a failed job, never a
500 or a stuck batch.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["DEFAULT_MAX_DEPTH", "json_problem", "text_problem"]

# Deeper than any honest model input or meta; far below where recursion would fail.
DEFAULT_MAX_DEPTH = 64

_UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why a ``text`` or ``jsonb`` column cannot store ``text``, or ``None``."""
    found = _UNSTORABLE_TEXT.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "a NUL character (\\u0000)"
    return f"a lone surrogate (\\u{ord(found.group()):04x})"


def json_problem(value: Any, *, max_depth: int | None = DEFAULT_MAX_DEPTH) -> str | None:
    """Why a JSON column cannot store ``value``, or ``None`` if it can.

    Walks the value with an explicit stack: no recursion, whatever its depth.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
        elif isinstance(item, float):
            problem = None if math.isfinite(item) else f"the number {item} (JSON has no NaN or Infinity)"
        elif isinstance(item, (dict, list, tuple)):
            if max_depth is not None and depth > max_depth:
                return f"nesting deeper than {max_depth} levels"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
            continue
        else:
            problem = None
        if problem:
            return problem
    return None
