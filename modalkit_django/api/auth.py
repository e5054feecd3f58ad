"""Who is calling: a user's API key (``Authorization: Bearer mk_…``), or ModalKit's static key."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest
from ninja.security import APIKeyHeader, HttpBearer
from ninja.security.base import SecuritySchema

from ..conf import get_config, get_settings
from ..exceptions import ModalkitImproperlyConfigured
from ..jobs.keys import authenticate_api_key
from ..models import ApiKey
from .threads import run_sync

__all__ = ["ApiKeyBearer", "Caller", "KeyCache", "StaticApiKey", "caller_of", "keys", "owner_of"]

DEFAULT_STATIC_KEY_HEADER = "x-api-key"


@dataclass(frozen=True)
class Caller:
    """Who is calling: a user's API key, or ModalKit's static key (no owner), with what
    the key may do. ``None`` limits mean the ``MODALKIT["API"]`` defaults."""

    owner: Any
    key_name: str
    key_prefix: str = ""
    # ModalKit's static key is the operators' one shared secret: it may name any queue.
    allowed_queues: tuple[str, ...] = ("*",)
    rate_limit: int | None = None
    max_queued_jobs: int | None = None

    @classmethod
    def of(cls, api_key: ApiKey) -> Caller:
        return cls(
            owner=api_key.owner,
            key_name=api_key.name,
            key_prefix=api_key.prefix,
            allowed_queues=tuple(api_key.allowed_queues or ()),
            rate_limit=api_key.rate_limit,
            max_queued_jobs=api_key.max_queued_jobs,
        )


class KeyCache:
    """Callers by key digest, kept ``MODALKIT["API"]["KEY_CACHE_SECONDS"]``: no query per
    request, and a revoked key (or a deactivated user) stops working within that time."""

    # A flood of made-up keys must not grow the cache without end.
    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Caller | None]] = {}

    async def caller(self, raw_key: str) -> Caller | None:
        digest = ApiKey.digest_of(raw_key)
        now = time.monotonic()
        entry = self._entries.get(digest)
        if entry is not None and entry[0] > now:
            return entry[1]
        api_key = await run_sync(authenticate_api_key, raw_key=raw_key)
        caller = Caller.of(api_key) if api_key else None
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[digest] = (now + get_settings().api.key_cache_seconds, caller)
        return caller

    def clear(self, **kwargs: Any) -> None:
        """``setting_changed`` receiver, and for tests."""
        self._entries.clear()


keys = KeyCache()


class ApiKeyBearer(HttpBearer):
    """``Authorization: Bearer mk_…`` — an :class:`~modalkit_django.models.ApiKey`."""

    async def authenticate(self, request: HttpRequest, token: str) -> Caller | None:
        return await keys.caller(token)


class StaticApiKey(APIKeyHeader):
    """ModalKit's ``auth_config``: one shared key in a header, read from ``modalkit.yaml``
    when a request comes (never at import: a broken file is a check error, not a crash)."""

    def __init__(self) -> None:
        # Not super().__init__(): ninja's reads param_name (so the file) right away.
        self.is_async = True

    @property
    def openapi_security_schema(self) -> SecuritySchema:  # type: ignore[override]
        return SecuritySchema(type="apiKey", name=self.param_name, **{"in": "header"})

    @property
    def param_name(self) -> str:  # type: ignore[override]
        try:
            return get_config().app_settings.auth_config.auth_header
        except ModalkitImproperlyConfigured:
            return DEFAULT_STATIC_KEY_HEADER

    async def authenticate(self, request: HttpRequest, key: str | None) -> Caller | None:
        expected = get_config().app_settings.auth_config.api_key
        if key and expected and hmac.compare_digest(key.encode(), expected.encode()):
            return Caller(owner=None, key_name="modalkit.yaml auth_config")
        return None


def caller_of(request: HttpRequest) -> Caller:
    caller: Caller = request.auth  # type: ignore[attr-defined]
    return caller


def owner_of(request: HttpRequest) -> Any:
    return caller_of(request).owner
