"""API keys, made here.

Staff who may change users (``auth.change_user``, or the custom user model's ``change``
permission; superusers have it) manage everyone's keys: they can already set any user's
password and act as them, so this grants nothing new and needs no permission (or
migration) of our own. Other staff with the API key permissions see, change, revoke and
create only their own keys, with the project's default queue grants and limits.
"""

from __future__ import annotations

import re
from typing import Any, cast
from weakref import WeakKeyDictionary

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename, get_user_model
from django.core.exceptions import ValidationError
from django.db.models import Field, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from ..models import ApiKey
from .common import QueryCheckingAdmin, status_badge
from .display import clipped, timestamp_field, timestamp_text

__all__ = ["ApiKeyAdmin", "QueuePatternsField"]

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
class ApiKeyAdmin(QueryCheckingAdmin):
    # Its limits are on the key's page: the list fits 1400 pixels.
    list_display = ["key_name", "owner_name", "prefix", "queues", "created", "state"]
    list_display_links = ["key_name"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix", "owner__username"]
    list_select_related = ["owner"]
    actions = ["revoke"]

    created = timestamp_field("created_at", "created", sortable=True)
    revoked = timestamp_field("revoked_at", "revoked")

    @admin.display(description="name", ordering="name")
    def key_name(self, api_key: ApiKey) -> str:
        return clipped(api_key.name)

    @admin.display(description="allowed queues")
    def queues(self, api_key: ApiKey) -> str:
        return clipped(", ".join(api_key.allowed_queues)) if api_key.allowed_queues else "—"

    @admin.display(description="owner")
    def owner_name(self, api_key: ApiKey) -> str:
        return clipped(str(api_key.owner))

    @admin.display(description="state", ordering="revoked_at")
    def state(self, api_key: ApiKey) -> str:
        if api_key.revoked_at is None:
            return status_badge("active")
        return status_badge("revoked", title=f"revoked {timestamp_text(api_key.revoked_at)}")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        # Every view (change, delete, history, actions) finds keys through here.
        queryset = super().get_queryset(request)
        return queryset if _manages_all_keys(request) else queryset.filter(owner=cast(int, request.user.pk))

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:  # type: ignore[override]
        if obj is None:
            return ["name", "owner", *_KEY_LIMITS]
        return ["name", "owner", "prefix", *_KEY_LIMITS, "created", "revoked"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        limits = [] if _manages_all_keys(request) else _KEY_LIMITS
        return limits if obj is None else ["owner", "prefix", *limits, "created", "revoked"]

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
