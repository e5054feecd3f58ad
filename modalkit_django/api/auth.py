"""Who is calling: a user's API key (``Authorization: Bearer mk_…``), or ModalKit's static key."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest
from ninja.security import APIKeyHeader, HttpBearer
from ninja.security.base import SecuritySchema

from .. import services
from ..conf import get_config
from ..exceptions import ModalkitImproperlyConfigured

__all__ = ["ApiKeyBearer", "Caller", "StaticApiKey", "owner_of"]

DEFAULT_STATIC_KEY_HEADER = "x-api-key"


@dataclass(frozen=True)
class Caller:
    """Who is calling: a user's API key, or ModalKit's static key (no owner)."""

    owner: Any
    key_name: str


class ApiKeyBearer(HttpBearer):
    """``Authorization: Bearer mk_…`` — an :class:`~modalkit_django.models.ApiKey`."""

    def authenticate(self, request: HttpRequest, token: str) -> Caller | None:
        api_key = services.authenticate_api_key(raw_key=token)
        return Caller(owner=api_key.owner, key_name=api_key.name) if api_key else None


class StaticApiKey(APIKeyHeader):
    """ModalKit's ``auth_config``: one shared key in a header, read from ``modalkit.yaml``
    when a request comes (never at import: a broken file is a check error, not a crash)."""

    def __init__(self) -> None:
        # Not super().__init__(): ninja's reads param_name (so the file) right away.
        self.is_async = False

    @property
    def openapi_security_schema(self) -> SecuritySchema:  # type: ignore[override]
        return SecuritySchema(type="apiKey", name=self.param_name, **{"in": "header"})

    @property
    def param_name(self) -> str:  # type: ignore[override]
        try:
            return get_config().app_settings.auth_config.auth_header
        except ModalkitImproperlyConfigured:
            return DEFAULT_STATIC_KEY_HEADER

    def authenticate(self, request: HttpRequest, key: str | None) -> Caller | None:
        expected = get_config().app_settings.auth_config.api_key
        if key and expected and hmac.compare_digest(key.encode(), expected.encode()):
            return Caller(owner=None, key_name="modalkit.yaml auth_config")
        return None


def owner_of(request: HttpRequest) -> Any:
    caller: Caller = request.auth  # type: ignore[attr-defined]
    return caller.owner
