"""What every ModalKit admin shares: status badges, safe JSON, read-only rows, checked input."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.contrib.admin import helpers
from django.core.exceptions import BadRequest, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext

from ..models import QueueDelivery
from ..models.validation import text_problem
from ..redaction import redact_text
from .actions import next_url
from .paging import ScalableChangeList, ScalablePaginator

__all__ = ["QueryCheckingAdmin", "ReadOnly", "ScalableAdmin", "pretty_json", "status_badge"]


def status_badge(status: str, *, title: str = "") -> str:
    # Coloured by admin.css (mk-status-<status>): no inline style for a strict CSP to refuse.
    if title:
        return format_html('<b class="mk-status mk-status-{}" title="{}">{}</b>', status, title, status)
    return format_html('<b class="mk-status mk-status-{}">{}</b>', status, status)


def pretty_json(value: Any) -> str:
    if value is None:
        return "—"
    return format_html('<pre class="mk-json">{}</pre>', json.dumps(value, indent=2))


class DeliveryError:
    # Errors quote URLs, and URLs often hold a token: shown redacted everywhere in the admin.
    @admin.display(description="last error")
    def redacted_error(self, delivery: QueueDelivery) -> str:
        return redact_text(delivery.last_error)


class QueryCheckingAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    class Media:
        # One-line cells and status colours, and the one script (copy buttons beside short
        # ids): static files, so a strict Content-Security-Policy refuses nothing here.
        css = {"all": ["modalkit_django/admin.css"]}
        js = ["modalkit_django/admin.js"]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # PostgreSQL refuses a NUL in any text parameter, and only when the query runs, after
        # the admin's own lookup checks: every filter would be a 500. No stored value has one.
        for name, values in request.GET.lists():
            if problem := next(filter(None, map(text_problem, [name, *values])), None):
                raise BadRequest(f"The query string has {problem}.")
        try:  # Django checks the ids of rows selected for an action only as it filters by them.
            for pk in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
                self.opts.pk.to_python(pk)
        except ValidationError as exc:
            raise BadRequest("A selected row's id is not valid.") from exc
        response = super().changelist_view(request, extra_context)
        if request.method == "POST" and isinstance(response, HttpResponseRedirect) and (back := next_url(request)):
            # An action started from a row's own page (its buttons) returns there, not to the list.
            return HttpResponseRedirect(back)
        return response


class ScalableAdmin(QueryCheckingAdmin):
    """A changelist whose cost does not grow with the table: estimated or capped counts,
    no facet counts, no full count, sorting only where an index serves it."""

    paginator = ScalablePaginator
    # Rendering rows, not querying them, is most of a page's time: 50, not Django's 100.
    # In a million rows, the filters find a row; paging does not.
    list_per_page = 50
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    # Columns (JSON payloads) the list never shows: not read for its rows.
    list_defer: tuple[str, ...] = ()

    def action_checkbox(self, obj: Any) -> SafeString:
        # Django renders this box through the form widget templates, once per row: a third
        # of a 100-row list's time. The same markup, built directly.
        label = format_html(gettext("Select this object for an action - {}"), str(obj))
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            helpers.ACTION_CHECKBOX_NAME,
            str(obj.pk),
            label,
        )

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ScalableChangeList]:
        return ScalableChangeList

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context and (cl := context.get("cl")) and hasattr(cl, "count_label"):
            # Django's note says "All 10001 selected" from the capped count: say what it is.
            context["selection_note_all"] = f"All {cl.count_label} selected"
        return response


class ReadOnly:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
