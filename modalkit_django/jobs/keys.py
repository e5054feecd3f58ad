"""API keys: issuing one to a user, and finding the key a request carries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..models import ApiKey

__all__ = ["authenticate_api_key", "create_api_key"]


def create_api_key(*, owner: Any, name: str, allowed_queues: Sequence[str] | None = None) -> tuple[ApiKey, str]:
    """Create a key for ``owner``, allowed to send results to ``allowed_queues`` (names or
    patterns; by default ``MODALKIT["API"]["DEFAULT_ALLOWED_QUEUES"]``); returns the row
    and the raw key (shown once)."""
    api_key = ApiKey(owner=owner, name=name)
    if allowed_queues is not None:
        api_key.allowed_queues = list(allowed_queues)
    raw_key = api_key.set_new_key()
    api_key.save()
    return api_key, raw_key


def authenticate_api_key(*, raw_key: str) -> ApiKey | None:
    return (
        ApiKey.objects.select_related("owner")
        .filter(digest=ApiKey.digest_of(raw_key), revoked_at__isnull=True, owner__is_active=True)
        .first()
    )
