"""The queue deliveries: a read-only ledger, filtered through its indexes, and redeliver."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from ..jobs.control import redeliver_deliveries
from ..models import DeliveryQuerySet, QueueDelivery
from .actions import RowAction, by_status, confirm_first, count_by_status, report, row_summary
from .common import DeliveryError, ReadOnly, ScalableAdmin, pretty_json, status_badge
from .display import id_cell, timestamp_field, timestamp_text, words
from .filters import BackendFilter, QueueNameFilter

__all__ = ["QueueDeliveryAdmin"]


def _redelivers(status: str, rows: int, on_call: int) -> int:
    return rows  # whatever its status: the stored payload is sent again


@admin.register(QueueDelivery)
class QueueDeliveryAdmin(ReadOnly, DeliveryError, ScalableAdmin):
    # One line a row at 1400 pixels (the error may wrap, between words): short ids, where it
    # goes as one cell, when it was sent or is tried next on its status's hover.
    list_display = ["short_id", "job_link", "destination", "status_badge", "tries", "error_cell", "created"]
    # Each served by an index: (status | backend | queue_name, created_at), created_at.
    list_filter = ["status", BackendFilter, "route", QueueNameFilter, "created_at"]
    search_fields = ["=id"]  # see get_search_results
    search_help_text = "A delivery id, a job id (its deliveries), or a message id."
    sortable_by = ["created"]
    # The job column shows job_id: no join, and the job's JSON is never read.
    list_select_related = False
    list_defer = ("payload",)
    actions = ["redeliver"]
    fields = readonly_fields = (
        "id", "job_link", "route", "queue_name", "backend", "message_id", "status_badge", "attempts",
        "redacted_error", "next_attempt", "sent", "external_id", "created", "payload_json",
    )  # fmt: skip

    created = timestamp_field("created_at", "created", sortable=True)
    sent = timestamp_field("sent_at", "sent")
    next_attempt = timestamp_field("next_attempt_at", "next attempt")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[QueueDelivery], search_term: str
    ) -> tuple[QuerySet[QueueDelivery], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            wanted = uuid.UUID(term)
        except ValueError:
            # Message ids ("<job id>:success") are unique, so indexed.
            return queryset.filter(message_id=term), False
        return queryset.filter(Q(pk=wanted) | Q(job_id=wanted)), False

    @admin.display(description="id")
    def short_id(self, delivery: QueueDelivery) -> str:
        return id_cell(delivery.pk)

    @admin.display(description="job")
    def job_link(self, delivery: QueueDelivery) -> str:
        return id_cell(delivery.job_id, url=reverse("admin:modalkit_django_job_change", args=[delivery.job_id]))

    @admin.display(description="to")
    def destination(self, delivery: QueueDelivery) -> str:
        return format_html(
            '<span class="mk-clip" title="{} route, {} backend, queue {}">{}: {}</span>',
            delivery.route, delivery.backend, delivery.queue_name, delivery.backend, delivery.queue_name,
        )  # fmt: skip

    @admin.display(description="status", ordering="status")
    def status_badge(self, delivery: QueueDelivery) -> str:
        if delivery.sent_at is not None:
            note = f"sent {timestamp_text(delivery.sent_at)}"
        elif delivery.next_attempt_at is not None and delivery.status != QueueDelivery.Status.DEAD:
            note = f"next attempt {timestamp_text(delivery.next_attempt_at)}"
        else:
            note = ""
        return status_badge(delivery.status, title=note)

    @admin.display(description="last error")
    def error_cell(self, delivery: QueueDelivery) -> str:
        # Redacted before it is cut, so that no part of a secret is left after the cut; cut
        # at a word, the whole (redacted) error on hover.
        return words(self.redacted_error(delivery), 64)

    @admin.display(description="tries")
    def tries(self, delivery: QueueDelivery) -> int:
        return delivery.attempts

    @admin.display(description="payload")
    def payload_json(self, delivery: QueueDelivery) -> str:
        return pretty_json(delivery.payload)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: QueueDelivery | None = None,
    ) -> Any:
        if obj is not None:
            buttons = []
            if "redeliver" in self.get_actions(request):  # filtered by permission, as the list's menu is
                url = reverse(f"{self.admin_site.name}:modalkit_django_queuedelivery_changelist")
                buttons.append(RowAction("redeliver", "Redeliver", url, [str(obj.pk)]))
            error = self.redacted_error(obj)
            summary = {"type": f"Delivery {obj.status}", "message": error} if error else None
            context.update(row_summary(summary, buttons, request.get_full_path()))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def has_redeliver_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("modalkit_django.redeliver_queuedelivery")

    @admin.action(description="Redeliver the stored result (no new inference)", permissions=["redeliver"])
    def redeliver(self, request: HttpRequest, queryset: DeliveryQuerySet) -> TemplateResponse | None:
        if page := confirm_first(self, request, queryset, verb="redeliver", touches=_redelivers):
            return page
        counts = count_by_status(queryset, _redelivers)
        count = redeliver_deliveries(queryset)
        note = f" ({by_status(counts)})" if count and len(counts) > 1 else ""
        report(self, request, f"Redelivering {count} message(s){note}.", [])
        return None
