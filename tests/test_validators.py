"""What the database can store: checked iteratively, whatever the depth."""

from __future__ import annotations

import pytest

from modalkit_django.models.validation import json_problem, text_problem


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"a": [1, 2.5, "ok", None, True]}, None),
        ("a\x00b", "a NUL character (\\u0000)"),
        ({"k\udfff": 1}, "a lone surrogate (\\udfff)"),
        ([float("inf")], "the number inf (JSON has no NaN or Infinity)"),
        ({"x": float("nan")}, "the number nan (JSON has no NaN or Infinity)"),
    ],
)
def test_what_jsonb_refuses_is_named(value: object, problem: str | None) -> None:
    assert json_problem(value) == problem


def test_depth_is_bounded_without_recursion() -> None:
    deep: object = "leaf"
    for _ in range(100_000):  # far past Python's recursion limit
        deep = [deep]
    assert json_problem(deep) == "nesting deeper than 64 levels"
    assert json_problem(deep, max_depth=None) is None
    shallow: object = "leaf"
    for _ in range(64):
        shallow = {"k": shallow}
    assert json_problem(shallow) is None


def test_text_problems() -> None:
    assert text_problem("plain") is None
    assert text_problem("\ud800x") == "a lone surrogate (\\ud800)"
