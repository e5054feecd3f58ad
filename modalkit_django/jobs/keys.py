"""API keys: issuing one to a user, and finding the key a request carries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..models import ApiKey

__all__ = ["authenticate_api_key", "create_api_key", "find_api_keys", "grant_queues"]


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


def grant_queues(*, api_key: ApiKey, allow: Sequence[str] = (), remove: Sequence[str] = ()) -> ApiKey:
    """Let ``api_key`` send results to the queue names or patterns ``allow`` too, and no
    longer to those in ``remove`` (as written, not matched); saves and returns it. Each
    process sees the change within ``MODALKIT["API"]["KEY_CACHE_SECONDS"]``."""
    patterns = [pattern for pattern in api_key.allowed_queues if pattern not in remove]
    patterns += [pattern for pattern in dict.fromkeys(allow) if pattern not in patterns]
    api_key.allowed_queues = patterns
    api_key.save(update_fields=["allowed_queues"])
    return api_key


def find_api_keys(*, key: str) -> list[ApiKey]:
    """The keys ``key`` names: the whole key, or its prefix as the admin lists it (``mk_AbC123``)."""
    keys = ApiKey.objects.select_related("owner").order_by("created_at")
    return list(keys.filter(digest=ApiKey.digest_of(key))) or list(keys.filter(prefix=key))


def authenticate_api_key(*, raw_key: str) -> ApiKey | None:
    return (
        ApiKey.objects.select_related("owner")
        .filter(digest=ApiKey.digest_of(raw_key), revoked_at__isnull=True, owner__is_active=True)
        .first()
    )
