"""The jobs: a read-only list that stays fast at millions of rows, and cancel / re-run."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from ..jobs.control import BulkResult, cancel_jobs, rerun_jobs
from ..models import FINISHED_JOB_STATUSES, Job, JobQuerySet, JobStatus, QueueDelivery
from ..redaction import redact_json
from .actions import RowAction, by_status, confirm_first, count_by_status, report, row_summary
from .common import DeliveryError, ReadOnly, ScalableAdmin, pretty_json, status_badge
from .display import EMPTY, clipped, duration, id_cell, relative, timestamp_field
from .filters import BatchFilter, ModelNameFilter, OwnerFilter, StatusFilter

__all__ = ["DeliveryInline", "JobAdmin"]


class DeliveryInline(ReadOnly, DeliveryError, admin.TabularInline):  # type: ignore[type-arg]
    model = QueueDelivery
    extra = 0
    can_delete = False
    show_change_link = True
    fields = readonly_fields = (
        "route", "queue_name", "backend", "status_badge", "attempts", "redacted_error", "next_attempt", "sent",
    )  # fmt: skip

    next_attempt = timestamp_field("next_attempt_at", "next attempt at")
    sent = timestamp_field("sent_at", "sent at")

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
    # One line a row at 1400 pixels: ids cut to 8 characters (the whole id on hover, a copy
    # button beside), times to the second, wait and run as durations; queues, owner and
    # finish time are on the job's page.
    list_display = ["short_id", "model_cell", "status_cell", "priority", "created", "wait", "run"]
    # Each filter is served by an index: (status | model_name | owner, created_at), batch_id, created_at;
    # a queued or scheduled job is a range of the partial index on queued jobs' due time.
    list_filter = [StatusFilter, ModelNameFilter, "priority", OwnerFilter, BatchFilter, "created_at"]
    search_fields = ["=id"]  # see get_search_results: a job or batch id, through the primary key
    search_help_text = "A job id, or a batch id for all its jobs."
    sortable_by = ["created"]
    list_select_related = ["owner"]
    list_defer = ("message", "meta", "result", "error", "request_fingerprint")
    inlines = [DeliveryInline]
    actions = ["cancel_jobs", "rerun_jobs"]
    fieldsets = [
        (None, {"fields": [
            ("id", "status_cell"), ("model_name", "priority", "owner", "batch_link"), ("attempts", "reruns"),
            ("progress_bar", "progress_message"),
        ]}),
        # As it went: queued, waited, started, ran, finished.
        ("Timing", {"fields": [
            ("queued", "wait", "started", "run", "finished"), ("created", "due", "expires", "lease_expires"),
        ]}),
        ("Routing", {"fields": [("success_queue", "failure_queue"), ("idempotency_key", "modal_call_id")]}),
        ("Payloads", {"fields": ["error_json", "result_json", "message_json", "meta_json", "partial_outputs_json"]}),
    ]  # fmt: skip
    readonly_fields = flatten_fieldsets(fieldsets)

    created = timestamp_field("created_at", "created", sortable=True)
    queued = timestamp_field("queued_at", "queued")
    started = timestamp_field("started_at", "started")
    finished = timestamp_field("finished_at", "finished")
    due = timestamp_field("run_after", "run after")
    expires = timestamp_field("expires_at", "deadline")
    lease_expires = timestamp_field("lease_expires_at", "lease expires")

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

    @admin.display(description="id")
    def short_id(self, job: Job) -> str:
        return id_cell(job.pk)

    @admin.display(description="model")
    def model_cell(self, job: Job) -> str:
        return clipped(job.model_name)

    @admin.display(description="status")
    def status_cell(self, job: Job) -> str:
        # Queued but not yet due (a run_after, or a retry's backoff, ahead): "scheduled",
        # with when it is due; its wait has not begun.
        if job.status == JobStatus.QUEUED and job.queued_at > timezone.now():
            return format_html(
                "{} {}",
                status_badge("scheduled", title="queued, not run before it is due"),
                format_html('<span class="mk-quiet">{}</span>', relative(job.queued_at)),
            )
        return status_badge(job.status)

    @admin.display(description="wait")
    def wait(self, job: Job) -> str:
        """started - queued; for a job still queued, how long so far."""
        now = timezone.now()
        if job.status == JobStatus.QUEUED:
            if job.queued_at > now:
                return EMPTY
            so_far = duration(job.queued_at, now)
            return format_html('<span class="mk-quiet mk-duration" title="waiting so far">{}</span>', so_far)
        return format_html('<span class="mk-duration">{}</span>', duration(job.queued_at, job.started_at))

    @admin.display(description="run")
    def run(self, job: Job) -> str:
        """finished - started; for a running job, its progress (or how long so far)."""
        if job.status == JobStatus.RUNNING:
            so_far = duration(job.started_at, timezone.now())
            if job.progress is not None:
                return self.progress_bar(job, title=f"running for {so_far}")
            return format_html('<span class="mk-quiet mk-duration" title="running so far">{}</span>', so_far)
        if job.status == JobStatus.QUEUED:
            return EMPTY  # a retry's earlier attempt is not this run
        return format_html('<span class="mk-duration">{}</span>', duration(job.started_at, job.finished_at))

    @admin.display(description="progress")
    def progress_bar(self, job: Job, *, title: str = "") -> str:
        if job.progress is None:
            return "—"
        percent = round(min(max(job.progress, 0.0), 1.0) * 100)
        note = "; ".join(part for part in (job.progress_message, title) if part) or f"{percent}%"
        return format_html(
            '<progress class="modalkit-progress" value="{}" max="100" title="{}">{}%</progress> {}%',
            percent,
            note,
            percent,
            percent,
        )

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

    def get_fieldsets(self, request: HttpRequest, obj: Job | None = None) -> Any:
        if obj is None or obj.progress is not None:
            return self.fieldsets
        # No progress reported: no row of two dashes above the timing.
        no_progress = [line for line in self.fieldsets[0][1]["fields"] if line != ("progress_bar", "progress_message")]
        return [(None, {"fields": no_progress}), *self.fieldsets[1:]]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Job | None = None,
    ) -> Any:
        if obj is not None:
            context.update(row_summary(obj.error, self.row_actions(request, obj), request.get_full_path()))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def row_actions(self, request: HttpRequest, job: Job) -> list[RowAction]:
        """The changelist's actions that this user may take and that would change this job."""
        allowed = self.get_actions(request)  # filtered by permission, as the changelist's menu is
        jobs = reverse(f"{self.admin_site.name}:modalkit_django_job_changelist")
        buttons = []
        if "cancel_jobs" in allowed and _cancels(job.status, 1, int(job.modal_call_id is not None)):
            buttons.append(RowAction("cancel_jobs", "Cancel this job", jobs, [str(job.pk)], danger=True))
        if "rerun_jobs" in allowed and _reruns(job.status, 1, 0):
            buttons.append(RowAction("rerun_jobs", "Re-run this job", jobs, [str(job.pk)]))
        deliveries = self.admin_site._registry.get(QueueDelivery)
        if deliveries is not None and "redeliver" in deliveries.get_actions(request):
            ids = [str(pk) for pk in QueueDelivery.objects.filter(job_id=job.pk).values_list("pk", flat=True)]
            if ids:
                url = reverse(f"{self.admin_site.name}:modalkit_django_queuedelivery_changelist")
                label = "Redeliver its delivery" if len(ids) == 1 else f"Redeliver its {len(ids)} deliveries"
                buttons.append(RowAction("redeliver", label, url, ids))
        return buttons

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
