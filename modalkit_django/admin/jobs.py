"""The jobs: a read-only list that stays fast at millions of rows, and cancel / re-run."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from ..jobs.control import BulkResult, cancel_jobs, rerun_jobs
from ..models import FINISHED_JOB_STATUSES, Job, JobQuerySet, JobStatus, QueueDelivery
from ..redaction import redact_json
from .actions import by_status, confirm_first, count_by_status, report
from .common import DeliveryError, ReadOnly, ScalableAdmin, pretty_json, status_badge
from .filters import BatchFilter, ModelNameFilter, OwnerFilter

__all__ = ["DeliveryInline", "JobAdmin"]


class DeliveryInline(ReadOnly, DeliveryError, admin.TabularInline):  # type: ignore[type-arg]
    model = QueueDelivery
    extra = 0
    can_delete = False
    show_change_link = True
    fields = readonly_fields = (
        "route", "queue_name", "backend", "status_badge", "attempts", "redacted_error", "next_attempt_at", "sent_at",
    )  # fmt: skip

    @admin.display(description="status")
    def status_badge(self, delivery: QueueDelivery) -> str:
        return status_badge(delivery.status)


def _cancels(status: str, rows: int, on_call: int) -> int:
    # Queued jobs, and running ones whose Modal call can be cancelled (JobQuerySet.cancel).
    return rows if status == JobStatus.QUEUED else on_call if status == JobStatus.RUNNING else 0


def _reruns(status: str, rows: int, on_call: int) -> int:
    return rows if status in FINISHED_JOB_STATUSES else 0


@admin.register(Job)
class JobAdmin(ReadOnly, ScalableAdmin):
    list_display = [
        "id", "model_name", "status_badge", "priority", "progress_bar", "owner", "created_at", "finished_at",
        "attempts", "queues",
    ]  # fmt: skip
    # Each filter is served by an index: (status | model_name | owner, created_at), batch_id, created_at.
    list_filter = ["status", ModelNameFilter, "priority", OwnerFilter, BatchFilter, "created_at"]
    search_fields = ["=id"]  # see get_search_results: a job or batch id, through the primary key
    search_help_text = "A job id, or a batch id for all its jobs."
    sortable_by = ["created_at"]
    list_select_related = ["owner"]
    list_defer = ("message", "meta", "result", "error", "partial_outputs", "request_fingerprint")
    inlines = [DeliveryInline]
    actions = ["cancel_jobs", "rerun_jobs"]
    fields = readonly_fields = (
        "id", "model_name", "status_badge", "priority", "progress_bar", "progress_message", "owner", "batch_link",
        "attempts", "reruns", "created_at", "queued_at", "started_at", "finished_at", "run_after", "expires_at",
        "lease_expires_at", "modal_call_id", "success_queue", "failure_queue", "idempotency_key",
        "message_json", "meta_json", "result_json", "error_json", "partial_outputs_json",
    )  # fmt: skip

    def get_urls(self) -> list[URLPattern]:
        # Imported here: the dashboard is its own module, and the admin loads without it.
        from ..dashboard.views import dashboard_view

        view = self.admin_site.admin_view(functools.partial(dashboard_view, site=self.admin_site))
        return [path("dashboard/", view, name="modalkit_django_dashboard"), *super().get_urls()]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Job], search_term: str
    ) -> tuple[QuerySet[Job], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            wanted = uuid.UUID(term)
        except ValueError:
            self.message_user(request, "Search takes a job id or a batch id (a UUID).", messages.WARNING)
            return queryset.none(), False
        # Two index lookups (the primary key, the batch's foreign key), never a scan of id::text.
        return queryset.filter(Q(pk=wanted) | Q(batch_id=wanted)), False

    @admin.display(description="status", ordering="status")
    def status_badge(self, job: Job) -> str:
        return status_badge(job.status)

    @admin.display(description="progress")
    def progress_bar(self, job: Job) -> str:
        if job.progress is None:
            return "—"
        percent = round(min(max(job.progress, 0.0), 1.0) * 100)
        return format_html(
            '<progress class="modalkit-progress" value="{}" max="100" title="{}">{}%</progress> {}%',
            percent,
            job.progress_message or f"{percent}%",
            percent,
            percent,
        )

    @admin.display(description="queues")
    def queues(self, job: Job) -> str:
        return format_html("{} / {}", job.success_queue or "—", job.failure_queue or "—")

    @admin.display(description="batch")
    def batch_link(self, job: Job) -> str:
        if job.batch_id is None:
            return "—"
        url = reverse("admin:modalkit_django_batch_change", args=[job.batch_id])
        return format_html('<a href="{}">{}</a>', url, job.batch_id)

    @admin.display(description="message")
    def message_json(self, job: Job) -> str:
        return pretty_json(job.message)

    @admin.display(description="meta")
    def meta_json(self, job: Job) -> str:
        return pretty_json(job.meta)

    @admin.display(description="result")
    def result_json(self, job: Job) -> str:
        return pretty_json(job.result)

    @admin.display(description="error")
    def error_json(self, job: Job) -> str:
        return pretty_json(redact_json(job.error))

    @admin.display(description="partial outputs")
    def partial_outputs_json(self, job: Job) -> str:
        return pretty_json(job.partial_outputs or None)

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("modalkit_django.cancel_job")

    def has_rerun_permission(self, request: HttpRequest) -> bool:
        # Re-running spends model time again: a permission of its own.
        return request.user.has_perm("modalkit_django.rerun_job")

    @admin.action(description="Cancel selected queued jobs (and running ones on a Modal call)", permissions=["cancel"])
    def cancel_jobs(self, request: HttpRequest, queryset: JobQuerySet) -> TemplateResponse | None:
        return self._act(request, queryset, "cancel", _cancels, cancel_jobs, done="Canceled")

    @admin.action(description="Re-run inference for selected finished jobs", permissions=["rerun"])
    def rerun_jobs(self, request: HttpRequest, queryset: JobQuerySet) -> TemplateResponse | None:
        return self._act(request, queryset, "re-run", _reruns, rerun_jobs, done="Re-queued")

    def _act(
        self,
        request: HttpRequest,
        queryset: JobQuerySet,
        verb: str,
        touches: Callable[[str, int, int], int],
        act: Callable[[JobQuerySet], BulkResult],
        *,
        done: str,
    ) -> TemplateResponse | None:
        """Confirm first (the page counts the rows by status); then act, set-based, and report."""
        if page := confirm_first(self, request, queryset, verb=verb, touches=touches):
            return page
        counts = count_by_status(queryset, touches)
        result = act(queryset)
        note = f" ({by_status(counts)})" if sum(1 for c in counts if c.touched) > 1 else ""
        report(self, request, f"{done} {result.done} job(s){note}.", result.left_alone.items())
        return None

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        dashboard = reverse(f"{self.admin_site.name}:modalkit_django_dashboard")
        return super().changelist_view(request, {"dashboard_url": dashboard, **(extra_context or {})})
