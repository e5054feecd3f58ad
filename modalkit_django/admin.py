"""The operator's view: jobs and deliveries are read-only rows; actions go through services.

API keys are made here. Staff who may change users (``auth.change_user``, or the custom
user model's ``change`` permission; superusers have it) manage everyone's keys: they can
already set any user's password and act as them, so this grants nothing new and needs no
permission (or migration) of our own. Other staff with the API key permissions see, change,
revoke and create only their own keys, with the project's default queue grants and limits.
"""

from __future__ import annotations

import json
import re
from typing import Any, cast
from weakref import WeakKeyDictionary

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_permission_codename, get_user_model
from django.core.exceptions import BadRequest, ValidationError
from django.db.models import Field, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from . import services
from .models import ApiKey, DeliveryQuerySet, Job, JobQuerySet, QueueDelivery
from .redaction import redact_json, redact_text
from .validators import text_problem

_STATUS_COLOURS = {
    "queued": "#777", "pending": "#777", "canceled": "#777", "expired": "#777", "running": "#1f6feb",
    "succeeded": "#1a7f37", "sent": "#1a7f37", "failed": "#cf222e", "dead": "#cf222e", "retrying": "#bf8700",
}  # fmt: skip


def _status_badge(status: str) -> str:
    return format_html('<b style="color:{}">{}</b>', _STATUS_COLOURS.get(status, "#000"), status)


def _pretty_json(value: Any) -> str:
    if value is None:
        return "—"
    return format_html("<pre style='margin:0;white-space:pre-wrap'>{}</pre>", json.dumps(value, indent=2))


class _DeliveryError:
    # Errors quote URLs, and URLs often hold a token: shown redacted everywhere in the admin.
    @admin.display(description="last error")
    def redacted_error(self, delivery: QueueDelivery) -> str:
        return redact_text(delivery.last_error)


class _QueryCheckingAdmin(admin.ModelAdmin):
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
        return super().changelist_view(request, extra_context)


class _ReadOnly:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeliveryInline(_ReadOnly, _DeliveryError, admin.TabularInline):
    model = QueueDelivery
    extra = 0
    can_delete = False
    show_change_link = True
    fields = readonly_fields = (
        "route", "queue_name", "backend", "status_badge", "attempts", "redacted_error", "next_attempt_at", "sent_at",
    )  # fmt: skip

    @admin.display(description="status")
    def status_badge(self, delivery: QueueDelivery) -> str:
        return _status_badge(delivery.status)


@admin.register(Job)
class JobAdmin(_ReadOnly, _QueryCheckingAdmin):
    list_display = ["id", "model_name", "status_badge", "owner", "created_at", "finished_at", "attempts", "queues"]
    list_filter = ["status", "model_name", "success_queue", "failure_queue", "created_at"]
    search_fields = ["=id", "=idempotency_key", "=modal_call_id", "success_queue", "failure_queue", "meta"]
    date_hierarchy = "created_at"
    list_select_related = ["owner"]
    inlines = [DeliveryInline]
    actions = ["cancel_jobs", "rerun_jobs"]
    fields = readonly_fields = (
        "id", "model_name", "status_badge", "owner", "attempts", "reruns",
        "created_at", "started_at", "finished_at", "run_after", "lease_expires_at", "modal_call_id",
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
        return _pretty_json(redact_json(job.error))

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("modalkit_django.cancel_job")

    def has_rerun_permission(self, request: HttpRequest) -> bool:
        # Re-running spends model time again: a permission of its own.
        return request.user.has_perm("modalkit_django.rerun_job")

    @admin.action(description="Cancel selected queued jobs (and running ones on a Modal call)", permissions=["cancel"])
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
class QueueDeliveryAdmin(_ReadOnly, _DeliveryError, _QueryCheckingAdmin):
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
        "redacted_error", "next_attempt_at", "sent_at", "external_id", "created_at", "payload_json",
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
        # Redacted before it is cut, so that no part of a secret is left after the cut.
        return self.redacted_error(delivery)[:80]

    @admin.display(description="payload")
    def payload_json(self, delivery: QueueDelivery) -> str:
        return _pretty_json(delivery.payload)

    def has_redeliver_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("modalkit_django.redeliver_queuedelivery")

    @admin.action(description="Redeliver the stored result (no new inference)", permissions=["redeliver"])
    def redeliver(self, request: HttpRequest, queryset: DeliveryQuerySet) -> None:
        count = services.redeliver_deliveries(queryset)
        self.message_user(request, f"Redelivering {count} message(s).", messages.SUCCESS)


# Queue names are printable text (as the API's schema has them): a line each, so any name fits.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_KEY_LIMITS = ["allowed_queues", "rate_limit", "max_queued_jobs"]
# A new key's raw value, from save_model to response_add of one request; gone with the request.
_new_keys: WeakKeyDictionary[HttpRequest, str] = WeakKeyDictionary()


class QueuePatternsField(forms.Field):
    """A list of queue names or patterns, typed one per line."""

    widget = forms.Textarea(attrs={"rows": 4, "cols": 60})

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(value) if isinstance(value, list) else value

    def to_python(self, value: Any) -> list[str]:
        # Split on "\n" only: str.splitlines() would also split on (and so hide) control characters.
        lines = (line.strip() for line in (value or "").split("\n"))
        return list(dict.fromkeys(line for line in lines if line))

    def validate(self, value: list[str]) -> None:
        super().validate(value)
        for pattern in value:
            if len(pattern) > 255 or _CONTROL.search(pattern):
                raise ValidationError(f"{pattern[:40]!r}: queue names are printable text, 255 characters at most.")


def _manages_all_keys(request: HttpRequest) -> bool:
    user_opts = get_user_model()._meta
    return request.user.has_perm(f"{user_opts.app_label}.{get_permission_codename('change', user_opts)}")


@admin.register(ApiKey)
class ApiKeyAdmin(_QueryCheckingAdmin):
    list_display = ["name", "owner", "prefix", "queues", "rate_limit", "max_queued_jobs", "created_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix", "owner__username"]
    list_select_related = ["owner"]
    actions = ["revoke"]

    @admin.display(description="allowed queues")
    def queues(self, api_key: ApiKey) -> str:
        return ", ".join(api_key.allowed_queues) or "—"

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        # Every view (change, delete, history, actions) finds keys through here.
        queryset = super().get_queryset(request)
        return queryset if _manages_all_keys(request) else queryset.filter(owner=cast(int, request.user.pk))

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:  # type: ignore[override]
        if obj is None:
            return ["name", "owner", *_KEY_LIMITS]
        return ["name", "owner", "prefix", *_KEY_LIMITS, "created_at", "revoked_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        limits = [] if _manages_all_keys(request) else _KEY_LIMITS
        return limits if obj is None else ["owner", "prefix", *limits, "created_at", "revoked_at"]

    def formfield_for_dbfield(self, db_field: Field[Any, Any], request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "allowed_queues":
            return QueuePatternsField(required=False, label="Allowed queues", help_text=db_field.help_text)
        if db_field.name in ("rate_limit", "max_queued_jobs"):
            kwargs["min_value"] = 1  # as the settings' defaults: empty, not 0, means the default
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "owner" and not _manages_all_keys(request):
            kwargs["queryset"] = get_user_model()._default_manager.filter(pk=cast(int, request.user.pk))
            kwargs["empty_label"] = None  # the one choice there is, chosen
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if not change:
            if not _manages_all_keys(request):
                obj.owner_id = cast(int, request.user.pk)  # the form allows no one else: made certain
            _new_keys[request] = obj.set_new_key()
        super().save_model(request, obj, form, change)

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        # Shown on this response itself: a redirect would have to carry the key in a message,
        # and the messages cookie is signed, not encrypted. Admin views are never cached.
        context = {
            **self.admin_site.each_context(request),
            "title": "Copy your new API key",
            "opts": self.opts,
            "api_key": obj,
            "raw_key": _new_keys.pop(request),
        }
        return TemplateResponse(request, "admin/modalkit_django/apikey/key_created.html", context)

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)
