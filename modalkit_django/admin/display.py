"""Cells that keep a row on one line at 1400 pixels: short ids, times to the second,
durations, and text cut at a word.

Every cell carries what it leaves out in a ``title`` (the full id, the exact time with its
zone, the whole text), so nothing is lost to the width; ``admin.js`` adds a copy button
beside each short id.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.utils import timezone
from django.utils.dateformat import format as date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from ..dashboard.charts import human_seconds

__all__ = [
    "EMPTY",
    "clipped",
    "duration",
    "id_cell",
    "relative",
    "timestamp",
    "timestamp_field",
    "timestamp_text",
    "words",
]

EMPTY = "-"  # the admin's own empty value
SHORT_ID = 8  # hex characters: a collision on one page of 50 is a one-in-a-million chance


def id_cell(value: Any, *, url: str | None = None) -> SafeString:
    """The first eight characters of an id; the whole id in its ``title`` and ``data-copy``."""
    full = str(value)
    text = format_html('<span class="mk-id" title="{}" data-copy="{}">{}</span>', full, full, full[:SHORT_ID])
    return format_html('<a href="{}">{}</a>', url, text) if url else text


def timestamp(value: dt.datetime | None, *, now: dt.datetime | None = None) -> SafeString | str:
    """A time to the second ("Dec 7, 19:18:43"; with the year when it is not this year's),
    in a ``<time>`` whose title is the exact time with its zone."""
    if value is None:
        return EMPTY
    local = timezone.localtime(value)
    this_year = timezone.localtime(now or timezone.now()).year == local.year
    shown = date_format(local, "M j, H:i:s" if this_year else "Y-m-d H:i:s")
    return format_html(
        '<time class="mk-time" datetime="{}" title="{}">{}</time>',
        value.isoformat(),
        timestamp_text(value),
        shown,
    )


def timestamp_text(value: dt.datetime) -> str:
    """The exact time, with its zone: what a title says on hover."""
    return date_format(timezone.localtime(value), "Y-m-d H:i:s T (O)")


def relative(value: dt.datetime, *, now: dt.datetime | None = None) -> SafeString:
    """ "in 20 min" or "4 s ago", rounded to its largest unit; the exact time in the ``title``."""
    seconds = (value - (now or timezone.now())).total_seconds()
    amount = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if amount >= size:
            rough = f"{int(amount // size)} {unit}"
            break
    else:
        rough = f"{int(amount)} s"
    return format_html(
        '<time class="mk-time" datetime="{}" title="{}">{}</time>',
        value.isoformat(),
        timestamp_text(value),
        f"in {rough}" if seconds > 0 else f"{rough} ago",
    )


def duration(start: dt.datetime | None, end: dt.datetime | None) -> SafeString | str:
    """``end - start`` as an operator reads it: "340 ms", "1.2 s", then whole minutes, hours
    or days ("3 min", "2 h 5 min") with the precise value on hover; ``-`` if either is missing."""
    if start is None or end is None:
        return EMPTY
    seconds = max(0.0, (end - start).total_seconds())
    precise = human_seconds(seconds)
    if seconds < 60:
        return precise
    # "3 min 12 s" is a column wider on every row; to the minute is what a glance needs.
    rounded = human_seconds(seconds // 60 * 60).removesuffix(" 0 s")
    return format_html('<span title="{}">{}</span>', precise, rounded) if rounded != precise else precise


# Where a cut may fall: after a space; in a text with none (one long URL), after a separator.
_SPACES = re.compile(r" +")
_SEPARATORS = re.compile(r"[/?&=,;:]")
_URL_PARTS = re.compile(r"(?<=[/?&=])(?=[^/?&= ])")


def words(text: str, limit: int) -> SafeString | str:
    """``text`` cut at the last word boundary before ``limit`` characters, with an ellipsis
    and the whole text in the ``title``; never cut inside a word."""
    text = " ".join(text.split())
    if not text:
        return EMPTY
    if len(text) <= limit:
        return format_html('<span class="mk-words">{}</span>', _breakable(text))
    head = text[: limit + 1]
    ends = [match.start() for match in _SPACES.finditer(head)] or [match.end() for match in _SEPARATORS.finditer(head)]
    cut = head[: ends[-1]] if ends else head[:limit]
    return format_html('<span class="mk-words" title="{}">{}…</span>', text, _breakable(cut.rstrip(" ,;:.-/?&=")))


def _breakable(text: str) -> SafeString:
    # A URL in a narrow column wraps after its separators (<wbr>), not at any letter.
    *parts, last = _URL_PARTS.split(text)
    return format_html("{}{}", format_html_join("", "{}<wbr>", ((part,) for part in parts)), last)


def clipped(text: str) -> SafeString | str:
    """Free text (a model or user name) kept to one line by CSS, the whole of it on hover."""
    if not text:
        return EMPTY
    return format_html('<span class="mk-clip" title="{}">{}</span>', text, text)


def timestamp_field(name: str, description: str, *, sortable: bool = False) -> Callable[[Any, Any], Any]:
    """A ``ModelAdmin`` column or read-only field showing the datetime ``name`` to the second
    (the admin's own format stops at the minute)."""

    @admin.display(description=description, ordering=name if sortable else None)
    def show(model_admin: Any, obj: Any) -> SafeString | str:
        return timestamp(getattr(obj, name))

    return show
