"""The scrape endpoint: 404 unless enabled, a bearer token if one is set."""

from __future__ import annotations

import hmac

from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from ..conf import get_settings
from .registry import scrape_registry

__all__ = ["metrics"]


def _authorized(request: HttpRequest, token: str) -> bool:
    scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
    # compare_digest: how long the check takes says nothing about the token.
    return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), token.encode())


@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus' exposition format (or OpenMetrics, if the scraper asks for it)."""
    settings = get_settings().metrics
    if not settings.enabled:
        raise Http404("Metrics are disabled (MODALKIT['METRICS']['ENABLED']).")
    if settings.token is not None and not _authorized(request, settings.token):
        response = HttpResponse("A valid 'Authorization: Bearer <token>' header is required.\n", status=401)
        response["Content-Type"] = "text/plain; charset=utf-8"
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    from prometheus_client.exposition import choose_encoder

    registry = scrape_registry()
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry), content_type=content_type)
