"""Batches (``POST /async/predict/batch``): read-only, with their jobs counted by status."""

from __future__ import annotations

import uuid

from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from ..models import Batch, Job
from .common import ReadOnly, ScalableAdmin, pretty_json, status_badge
from .display import clipped, id_cell, timestamp_field

__all__ = ["BatchAdmin"]


@admin.register(Batch)
class BatchAdmin(ReadOnly, ScalableAdmin):
    list_display = ["short_id", "model_cell", "size", "created", "completed"]
    list_filter = ["created_at", "completed_at"]
    search_fields = ["=id"]  # see get_search_results
    search_help_text = "A batch id."
    sortable_by = ["created"]
    list_defer = ("meta",)
    fields = readonly_fields = (
        "id", "model_name", "size", "jobs_by_status", "owner", "api_key_prefix", "completion_queue",
        "idempotency_key", "created", "completed", "meta_json",
    )  # fmt: skip

    created = timestamp_field("created_at", "created", sortable=True)
    completed = timestamp_field("completed_at", "completed")

    @admin.display(description="id")
    def short_id(self, batch: Batch) -> str:
        return id_cell(batch.pk)

    @admin.display(description="model")
    def model_cell(self, batch: Batch) -> str:
        return clipped(batch.model_name)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Batch], search_term: str
    ) -> tuple[QuerySet[Batch], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(pk=uuid.UUID(term)), False
        except ValueError:
            self.message_user(request, "Search takes a batch id (a UUID).", messages.WARNING)
            return queryset.none(), False

    @admin.display(description="jobs by status")
    def jobs_by_status(self, batch: Batch) -> str:
        # One GROUP BY through the jobs' batch_id index, however large the batch.
        counts = Job.objects.filter(batch=batch).order_by().values_list("status").annotate(n=Count("pk"))
        jobs = reverse("admin:modalkit_django_job_changelist")
        rows = format_html_join(
            "",
            '<li>{}: <a href="{}?batch={}&amp;status__exact={}">{}</a></li>',
            ((status_badge(status), jobs, batch.pk, status, count) for status, count in sorted(counts)),
        )
        every = format_html('<a href="{}?batch={}">all jobs of this batch</a>', jobs, batch.pk)
        return format_html('<ul class="modalkit-batch-counts" style="margin:0">{}</ul>{}', rows, every)

    @admin.display(description="meta")
    def meta_json(self, batch: Batch) -> str:
        return pretty_json(batch.meta)
