"""The metrics' system check: enabled, but prometheus-client is not installed."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import find_spec
from typing import Any

from django.apps import AppConfig
from django.core import checks

from ..conf import get_settings
from ..exceptions import ModalkitImproperlyConfigured

__all__ = ["check_metrics"]


def check_metrics(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        enabled = get_settings().metrics.enabled
    except ModalkitImproperlyConfigured:
        return []  # E001 says so
    if not enabled or find_spec("prometheus_client") is not None:
        return []
    return [
        checks.Error(
            "MODALKIT['METRICS'] is enabled and needs 'prometheus_client', which is not installed.",
            hint='Install it: pip install "modalkit-django[metrics]"',
            id="modalkit_django.E011",
        )
    ]
