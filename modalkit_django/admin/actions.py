"""Bulk actions behind a confirmation page, run as a few set-based statements.

The first POST (from the changelist's action menu) renders a page that counts the
selected rows by status and says how many the action will touch; confirming posts the
same selection back with ``post=yes`` and the action runs through ``services``. With
"select all" the selection is the changelist's whole filtered queryset, carried by the
page's URL (its filters) and ``select_across``, never as a list of ids.

A row's own page offers the same actions as buttons (:class:`RowAction`): each posts that
row to its changelist's action, so the same permission check and confirmation page apply,
and ``_next`` brings the operator back to the page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.http import url_has_allowed_host_and_scheme

from ..redaction import redact_json

__all__ = ["RowAction", "StatusCount", "confirm_first", "count_by_status", "next_url", "report", "row_summary"]


@dataclass(frozen=True)
class StatusCount:
    status: str
    selected: int
    touched: int


def count_by_status(queryset: QuerySet[Any], touches: Callable[[str, int, int], int]) -> list[StatusCount]:
    """One ``GROUP BY status`` over the selection; ``touches(status, rows, rows_on_a_call)``
    says how many of a status the action changes."""
    on_call = Count("pk", filter=Q(modal_call_id__isnull=False)) if _has_field(queryset, "modal_call_id") else None
    rows = queryset.order_by().values_list("status").annotate(n=Count("pk"), **({"c": on_call} if on_call else {}))
    counts = []
    for row in sorted(rows):
        status, selected = row[0], row[1]
        counts.append(StatusCount(status, selected, touches(status, selected, row[2] if on_call else 0)))
    return counts


def next_url(request: HttpRequest) -> str | None:
    """Where an action started from a row's own page returns (its ``_next``), if it is this site."""
    url = request.POST.get("_next", "")
    safe = url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()}, require_https=request.is_secure())
    return url if url and safe else None


def _has_field(queryset: QuerySet[Any], name: str) -> bool:
    return any(field.name == name for field in queryset.model._meta.concrete_fields)


def confirm_first(
    model_admin: admin.ModelAdmin[Any],
    request: HttpRequest,
    queryset: QuerySet[Any],
    *,
    verb: str,
    touches: Callable[[str, int, int], int],
) -> TemplateResponse | None:
    """The confirmation page, unless this POST confirms it (then ``None``: go ahead)."""
    if request.POST.get("post") == "yes":
        return None
    counts = count_by_status(queryset, touches)
    opts = model_admin.opts
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"{verb.capitalize()}: are you sure?",
        "subtitle": None,
        "opts": opts,
        "verb": verb,
        "counts": counts,
        "selected": sum(count.selected for count in counts),
        "touched": sum(count.touched for count in counts),
        "action": request.POST.get("action", ""),
        "select_across": request.POST.get("select_across", "0"),
        "selected_ids": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "form_url": request.get_full_path(),
        # From a row's own page: "No" goes back there, and so does "Yes" once done.
        "next_url": next_url(request),
        "media": model_admin.media,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/modalkit_django/confirm_action.html", context)


def report(
    model_admin: admin.ModelAdmin[Any], request: HttpRequest, done: str, left_alone: Iterable[tuple[str, int]]
) -> None:
    """What an action did, then what it left alone, by status."""
    model_admin.message_user(request, done, messages.SUCCESS)
    left = [f"{count:,} {status}" for status, count in sorted(left_alone) if count]
    if left:
        model_admin.message_user(request, f"Left alone: {', '.join(left)}.", messages.WARNING)


def by_status(counts: Iterable[StatusCount], *, touched: bool = True) -> str:
    """``4,000 queued, 3 running``: the touched (or all) rows of each status."""
    parts = [f"{(c.touched if touched else c.selected):,} {c.status}" for c in counts]
    return ", ".join(part for part in parts if not part.startswith("0 "))


@dataclass(frozen=True)
class RowAction:
    """A button on a row's own page: one of the changelist's actions, on this row (or its
    deliveries), posted to that changelist so that it confirms first and checks the same
    permission; ``_next`` brings the operator back to the page."""

    name: str  # the action's name in the changelist's menu
    label: str
    url: str  # the changelist that runs it
    ids: list[str]
    danger: bool = False


def row_summary(error: Any, actions: list[RowAction], next_url: str) -> dict[str, Any]:
    """The top of a row's page: what went wrong (type and message, redacted), then the buttons."""
    summary: dict[str, Any] = {"row_actions": actions, "row_next": next_url, "row_error": None}
    if error:
        error = redact_json(error)
        if isinstance(error, dict):
            summary["row_error"] = {"type": str(error.get("type") or "Error"), "message": str(error.get("message", ""))}
        else:
            summary["row_error"] = {"type": "Error", "message": str(error)}
    return summary
