"""The admin's one-line cells: short ids, times to the second, durations, text cut at a word."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.test import override_settings

from modalkit_django.admin.display import clipped, duration, id_cell, relative, timestamp, words

T = dt.datetime(2026, 12, 7, 19, 18, 43, tzinfo=dt.UTC)


def test_an_id_is_its_first_eight_characters_with_the_whole_on_hover() -> None:
    job = uuid.UUID("9e6a3f38-5854-497d-84c0-d6b62dc29232")
    assert id_cell(job) == (
        '<span class="mk-id" title="9e6a3f38-5854-497d-84c0-d6b62dc29232" '
        'data-copy="9e6a3f38-5854-497d-84c0-d6b62dc29232">9e6a3f38</span>'
    )
    assert id_cell(job, url="/job/?a=1&b=2").startswith('<a href="/job/?a=1&amp;b=2"><span class="mk-id"')


@override_settings(TIME_ZONE="Europe/Paris", USE_TZ=True)
def test_times_are_shown_to_the_second_in_local_time_the_exact_time_on_hover() -> None:
    assert timestamp(T, now=T) == (
        '<time class="mk-time" datetime="2026-12-07T19:18:43+00:00" '
        'title="2026-12-07 20:18:43 CET (+0100)">Dec 7, 20:18:43</time>'
    )
    # Another year's: with its year.
    assert ">2025-12-07 20:18:43</time>" in timestamp(T.replace(year=2025), now=T)
    assert timestamp(None) == "-"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.34, "340 ms"),
        (4.25, "4.2 s"),
        (59.9, "59.9 s"),
        (192, '<span title="3 min 12 s">3 min</span>'),
        (7500, "2 h 5 min"),
        (90000, "1 d 1 h"),
        (-3, "0 ms"),  # clocks apart: never a negative wait
    ],
)
def test_durations_read_as_an_operator_reads_them(seconds: float, shown: str) -> None:
    assert duration(T, T + dt.timedelta(seconds=seconds)) == shown


def test_a_missing_end_is_no_duration() -> None:
    assert duration(T, None) == duration(None, T) == "-"


def test_relative_times_round_to_their_largest_unit() -> None:
    assert ">in 20 min</time>" in relative(T + dt.timedelta(minutes=20, seconds=30), now=T)
    assert ">4 s ago</time>" in relative(T - dt.timedelta(seconds=4.6), now=T)
    assert ">in 2 d</time>" in relative(T + dt.timedelta(days=2, hours=5), now=T)


def test_text_is_cut_where_a_word_ends_never_inside_one() -> None:
    text = "POST https://hooks.example.com/x answered 503 Service Unavailable after 8 attempts"
    cut = words(text, 48)
    assert cut.startswith(f'<span class="mk-words" title="{text}">')
    shown = cut.split(">", 1)[1].removesuffix("</span>").replace("<wbr>", "")
    assert shown == "POST https://hooks.example.com/x answered 503…"
    # A URL wraps after its separators, not at any letter.
    assert "https://<wbr>hooks.example.com/<wbr>x" in cut
    # Short text is whole, and markup in it is text.
    assert words("a <b>bold</b>  claim\n", 60) == '<span class="mk-words">a &lt;b&gt;bold&lt;/<wbr>b&gt; claim</span>'
    assert words("", 10) == "-"


def test_one_long_token_is_cut_after_a_separator() -> None:
    url = "https://files.example.com/bucket/some/deep/path/object.bin"
    shown = words(url, 40).split(">", 1)[1].removesuffix("</span>").replace("<wbr>", "")
    assert shown == "https://files.example.com/bucket/some…"
    assert words("x" * 50, 10).endswith(">xxxxxxxxxx…</span>")


def test_free_text_is_clipped_by_css_with_the_whole_on_hover() -> None:
    assert clipped("sentiment-<v2>") == '<span class="mk-clip" title="sentiment-&lt;v2&gt;">sentiment-&lt;v2&gt;</span>'
    assert clipped("") == "-"
