"""The operator's view: jobs and deliveries are read-only rows; actions go through services."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from . import services
from .models import ApiKey, DeliveryQuerySet, Job, JobQuerySet, QueueDelivery

_STATUS_COLOURS = {
    "queued": "#777",
    "running": "#1f6feb",
    "succeeded": "#1a7f37",
    "sent": "#1a7f37",
    "failed": "#cf222e",
    "dead": "#cf222e",
    "retrying": "#bf8700",
    "pending": "#777",
    "canceled": "#777",
    "expired": "#777",
}


def _status_badge(status: str) -> str:
    return format_html('<b style="color:{}">{}</b>', _STATUS_COLOURS.get(status, "#000"), status)


def _pretty_json(value: Any) -> str:
    if value is None:
        return "—"
    return format_html("<pre style='margin:0;white-space:pre-wrap'>{}</pre>", json.dumps(value, indent=2))


class _ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeliveryInline(admin.TabularInline):
    model = QueueDelivery
    extra = 0
    can_delete = False
    show_change_link = True
    fields = readonly_fields = (
        "route", "queue_name", "backend", "status_badge", "attempts", "last_error", "next_attempt_at", "sent_at",
    )  # fmt: skip

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="status")
    def status_badge(self, delivery: QueueDelivery) -> str:
        return _status_badge(delivery.status)


@admin.register(Job)
class JobAdmin(_ReadOnlyAdmin):
    list_display = ["id", "model_name", "status_badge", "owner", "created_at", "finished_at", "attempts", "queues"]
    list_filter = ["status", "model_name", "success_queue", "failure_queue", "created_at"]
    search_fields = ["=id", "=idempotency_key", "success_queue", "failure_queue", "meta"]
    date_hierarchy = "created_at"
    list_select_related = ["owner"]
    inlines = [DeliveryInline]
    actions = ["cancel_jobs", "rerun_jobs"]
    fields = readonly_fields = (
        "id", "model_name", "status_badge", "owner", "attempts", "reruns",
        "created_at", "started_at", "finished_at", "run_after", "lease_expires_at",
        "success_queue", "failure_queue", "idempotency_key",
        "message_json", "meta_json", "result_json", "error_json",
    )  # fmt: skip

    @admin.display(description="status", ordering="status")
    def status_badge(self, job: Job) -> str:
        return _status_badge(job.status)

    @admin.display(description="queues")
    def queues(self, job: Job) -> str:
        return format_html("{} / {}", job.success_queue or "—", job.failure_queue or "—")

    @admin.display(description="message")
    def message_json(self, job: Job) -> str:
        return _pretty_json(job.message)

    @admin.display(description="meta")
    def meta_json(self, job: Job) -> str:
        return _pretty_json(job.meta)

    @admin.display(description="result")
    def result_json(self, job: Job) -> str:
        return _pretty_json(job.result)

    @admin.display(description="error")
    def error_json(self, job: Job) -> str:
        return _pretty_json(job.error)

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("modalkit_django.cancel_job")

    def has_rerun_permission(self, request: HttpRequest) -> bool:
        # Re-running spends model time again: a permission of its own.
        return request.user.has_perm("modalkit_django.rerun_job")

    @admin.action(description="Cancel selected queued jobs", permissions=["cancel"])
    def cancel_jobs(self, request: HttpRequest, queryset: JobQuerySet) -> None:
        self._report(request, "Canceled", services.cancel_jobs(queryset))

    @admin.action(description="Re-run inference for selected finished jobs", permissions=["rerun"])
    def rerun_jobs(self, request: HttpRequest, queryset: JobQuerySet) -> None:
        self._report(request, "Re-queued", services.rerun_jobs(queryset))

    def _report(self, request: HttpRequest, verb: str, result: services.BulkResult) -> None:
        if result.done:
            self.message_user(request, f"{verb} {result.done} job(s).", messages.SUCCESS)
        if result.left_alone:
            left = ", ".join(f"{count} {status}" for status, count in sorted(result.left_alone.items()))
            self.message_user(request, f"Left alone: {left}.", messages.WARNING)


@admin.register(QueueDelivery)
class QueueDeliveryAdmin(_ReadOnlyAdmin):
    list_display = [
        "id", "job_link", "route", "queue_name", "backend", "status_badge",
        "attempts", "last_error_short", "next_attempt_at", "sent_at",
    ]  # fmt: skip
    list_filter = ["status", "backend", "route", "queue_name", "created_at"]
    search_fields = ["=id", "=job__id", "queue_name", "message_id"]
    date_hierarchy = "created_at"
    list_select_related = ["job"]
    actions = ["redeliver"]
    fields = readonly_fields = (
        "id", "job_link", "route", "queue_name", "backend", "message_id", "status_badge", "attempts",
        "last_error", "next_attempt_at", "sent_at", "external_id", "created_at", "payload_json",
    )  # fmt: skip

    @admin.display(description="job")
    def job_link(self, delivery: QueueDelivery) -> str:
        url = reverse("admin:modalkit_django_job_change", args=[delivery.job_id])
        return format_html('<a href="{}">{}</a>', url, delivery.job_id)

    @admin.display(description="status", ordering="status")
    def status_badge(self, delivery: QueueDelivery) -> str:
        return _status_badge(delivery.status)

    @admin.display(description="last error")
    def last_error_short(self, delivery: QueueDelivery) -> str:
        return delivery.last_error[:80]

    @admin.display(description="payload")
    def payload_json(self, delivery: QueueDelivery) -> str:
        return _pretty_json(delivery.payload)

    def has_redeliver_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("modalkit_django.redeliver_queuedelivery")

    @admin.action(description="Redeliver the stored result (no new inference)", permissions=["redeliver"])
    def redeliver(self, request: HttpRequest, queryset: DeliveryQuerySet) -> None:
        count = services.redeliver_deliveries(queryset)
        self.message_user(request, f"Redelivering {count} message(s).", messages.SUCCESS)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "prefix", "created_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix", "owner__username"]
    list_select_related = ["owner"]
    actions = ["revoke"]

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:  # type: ignore[override]
        if obj is None:
            return ["name", "owner"]
        return ["name", "owner", "prefix", "created_at", "revoked_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        return [] if obj is None else ["owner", "prefix", "created_at", "revoked_at"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        raw_key = obj.set_new_key()
        super().save_model(request, obj, form, change)
        self.message_user(
            request,
            f"API key: {raw_key} — copy it now; it is not stored and will not be shown again.",
            messages.WARNING,
        )

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)
