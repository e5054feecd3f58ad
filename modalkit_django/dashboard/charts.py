"""Small charts drawn on the server as inline SVG: no JavaScript, no CDN, nothing to fetch.

Admins often run where the internet is out of reach, so the page carries its own pictures.
Each chart is ``role="img"`` with a ``<title>`` and a ``<desc>`` for screen readers, and each
bar or point has its own ``<title>`` (the browser shows it as a tooltip). Colours come from
the admin's CSS variables, so the charts follow its light and dark themes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

__all__ = ["WIDTH", "Series", "bar_chart", "human_seconds", "series_chart"]

_ids = itertools.count(1)
WIDTH = 480  # half of the dashboard's width at 1280 pixels: drawn at about 1:1
ROW = 22
LABEL = 120
TOP, BOTTOM, LEFT, RIGHT = 26, 28, 52, 12
HEIGHT = 190


@dataclass(frozen=True)
class Series:
    """One named series of a time chart; None is a gap (nothing measured in that bucket)."""

    name: str
    values: Sequence[float | None]
    css_class: str
    kind: str = "line"  # or "bar"


def human_seconds(seconds: float | None) -> str:
    """A duration the way an operator reads it: "340 ms", "4.2 s", "3 min 12 s", "2 h 5 min"."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


def _open(title: str, desc: str, width: int, height: int) -> SafeString:
    uid = next(_ids)
    return format_html(
        '<svg class="mk-chart" role="img" aria-labelledby="mk-t{0} mk-d{0}" width="{1}" height="{2}" '
        'viewBox="0 0 {1} {2}" xmlns="http://www.w3.org/2000/svg">'
        '<title id="mk-t{0}">{3}</title><desc id="mk-d{0}">{4}</desc>',
        uid,
        width,
        height,
        title,
        desc,
    )


def bar_chart(title: str, items: Sequence[tuple[str, int]]) -> SafeString:
    """Horizontal bars, one per ``(label, count)``, scaled to the largest."""
    height = max(1, len(items)) * ROW + 4
    top = max((count for _, count in items), default=0) or 1
    span = WIDTH - LABEL - 70
    desc = ", ".join(f"{label}: {count}" for label, count in items) or "nothing to show"
    rows = format_html_join(
        "",
        '<g class="mk-row"><title>{0}: {1}</title>'
        '<text class="mk-label" x="{2}" y="{3}" text-anchor="end">{0}</text>'
        '<rect class="mk-bar mk-{5}" x="{4}" y="{6}" width="{7}" height="{8}"></rect>'
        '<text class="mk-value" x="{9}" y="{3}">{1}</text></g>',
        (
            (
                label,
                count,
                LABEL - 8,
                index * ROW + 15,
                LABEL,
                _slug(label),
                index * ROW + 4,
                _n(span * count / top),
                ROW - 6,
                _n(LABEL + 6 + span * count / top),
            )
            for index, (label, count) in enumerate(items)
        ),
    )
    return mark_safe(_open(title, desc, WIDTH, height) + rows + "</svg>")  # every piece built by format_html


def series_chart(
    title: str, labels: Sequence[str], series: Sequence[Series], *, unit: str = "", width: int = WIDTH
) -> SafeString:
    """Values over time buckets: bars and lines on one axis, a legend, a few gridlines."""
    count = max(1, len(labels))
    values = [value for one in series for value in one.values if value is not None]
    top = _nice(max(values, default=0))
    plot_w, plot_h = width - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / count

    def x(index: int) -> float:
        return LEFT + step * (index + 0.5)

    def y(value: float) -> float:
        return TOP + plot_h - plot_h * value / top

    def show(value: float) -> str:
        return human_seconds(value) if unit == "s" else f"{value:g}"

    parts = [_open(title, _describe(labels, series, show), width, HEIGHT)]
    for tick in (0, top / 2, top):
        parts.append(
            format_html(
                '<line class="mk-grid" x1="{0}" x2="{1}" y1="{2}" y2="{2}"></line>'
                '<text class="mk-axis" x="{3}" y="{4}" text-anchor="end">{5}</text>',
                LEFT,
                width - RIGHT,
                _n(y(tick)),
                LEFT - 4,
                _n(y(tick) + 4),
                show(tick),
            )
        )
    every = math.ceil(count / 12)
    for index, label in enumerate(labels):
        if index % every == 0:
            parts.append(
                format_html(
                    '<text class="mk-axis" x="{0}" y="{1}" text-anchor="middle">{2}</text>',
                    _n(x(index)),
                    HEIGHT - 10,
                    label,
                )
            )
    bars = [one for one in series if one.kind == "bar"]
    bar_w = step * 0.8 / max(1, len(bars))
    for offset, one in enumerate(bars):
        for index, value in enumerate(one.values):
            if value:
                parts.append(
                    format_html(
                        '<rect class="mk-bar {0}" x="{1}" y="{2}" width="{3}" height="{4}">'
                        "<title>{5} {6}: {7}</title></rect>",
                        one.css_class,
                        _n(x(index) - step * 0.4 + offset * bar_w),
                        _n(y(value)),
                        _n(bar_w),
                        _n(TOP + plot_h - y(value)),
                        labels[index],
                        one.name,
                        show(value),
                    )
                )
    for one in series:
        if one.kind == "line":
            parts.extend(_line(one, labels, x, y, show))
    for offset, one in enumerate(series):
        parts.append(
            format_html(
                '<rect class="mk-key {0}" x="{1}" y="6" width="10" height="10"></rect>'
                '<text class="mk-axis" x="{2}" y="15">{3}</text>',
                one.css_class,
                LEFT + offset * 90,
                LEFT + offset * 90 + 14,
                one.name,
            )
        )
    return mark_safe("".join(parts) + "</svg>")  # every part built by format_html


def _line(
    one: Series,
    labels: Sequence[str],
    x: Callable[[int], float],
    y: Callable[[float], float],
    show: Callable[[float], str],
) -> list[SafeString]:
    """A polyline per unbroken run of values, and a dot with a tooltip on each value."""
    parts: list[SafeString] = []
    run: list[str] = []
    for index, value in enumerate([*one.values, None]):
        if value is None:
            if run:
                parts.append(
                    format_html('<polyline class="mk-line {0}" points="{1}"></polyline>', one.css_class, " ".join(run))
                )
            run = []
            continue
        run.append(f"{_n(x(index))},{_n(y(value))}")
        parts.append(
            format_html(
                '<circle class="mk-dot {0}" cx="{1}" cy="{2}" r="3"><title>{3} {4}: {5}</title></circle>',
                one.css_class,
                _n(x(index)),
                _n(y(value)),
                labels[index],
                one.name,
                show(value),
            )
        )
    return parts


def _describe(labels: Sequence[str], series: Sequence[Series], show: Callable[[float], str]) -> str:
    described = []
    for one in series:
        points = [
            f"{label} {show(value)}" for label, value in zip(labels, one.values, strict=True) if value is not None
        ]
        described.append(f"{one.name}: {', '.join(points) if points else 'none'}")
    return "; ".join(described)


def _nice(value: float) -> float:
    """The axis top: the value rounded up to 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def _slug(label: str) -> str:
    return "".join(char if char.isalnum() else "-" for char in label.lower())


def _n(value: float) -> str:
    """A coordinate: a tenth of a pixel is precise enough, and keeps the markup short."""
    return f"{value:.1f}".removesuffix(".0")
