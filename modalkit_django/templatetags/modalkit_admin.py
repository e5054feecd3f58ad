"""``{% load modalkit_admin %}``: the admin's breadcrumbs, drawn as the running Django draws its own.

Django 5.2 draws them as ``<div class="breadcrumbs">`` with &rsaquo; between links, and its CSS
styles only that; Django 6 draws an ``<ol class="breadcrumbs">`` of ``<li>``s and styles only
that. A page of ours that is not one of Django's own (the dashboard, the new key, an
action's confirmation) takes its markup from Django's own ``admin/base.html``, so it looks
the same as the pages around it on either.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from django import template
from django.contrib import admin
from django.urls import reverse
from django.utils.text import capfirst
from django.utils.translation import gettext

register = template.Library()


@functools.cache
def breadcrumbs_are_a_list() -> bool:
    """Whether this Django's admin draws its breadcrumbs as an ``<ol>``: read from the
    admin's own base template, the one its CSS goes with (a project's override may differ)."""
    base = Path(admin.__file__).parent / "templates" / "admin" / "base.html"
    return '<ol class="breadcrumbs">' in base.read_text(encoding="utf-8")


@register.inclusion_tag("admin/modalkit_django/breadcrumbs.html", takes_context=True)
def modalkit_breadcrumbs(context: template.Context, opts: Any, current: str, list_url: str = "") -> dict[str, Any]:
    """Home, the app, the model's list (``list_url``, else its changelist), then ``current``."""
    request = context.get("request")
    current_app = getattr(request, "current_app", None) or getattr(
        getattr(request, "resolver_match", None), "namespace", None
    )

    def url(name: str, **kwargs: Any) -> str:
        return reverse(name, kwargs=kwargs or None, current_app=current_app)

    changelist = list_url or url(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    return {
        "as_list": breadcrumbs_are_a_list(),
        "links": [
            (gettext("Home"), url("admin:index")),
            (opts.app_config.verbose_name, url("admin:app_list", app_label=opts.app_label)),
            (capfirst(opts.verbose_name_plural), changelist),
        ],
        "current": current,
    }
