"""``GET /health`` (liveness) and ``GET /ready`` (readiness), for load balancers and orchestrators.

Mount them with ``path("", include("modalkit_django.urls"))``. They need no
authentication and reveal nothing secret: which checks passed, how long each took and,
for a failed one, its error with any credentials in URLs masked
(:func:`~modalkit_django.redaction.redact_text`). Hosts and ports of your database,
Redis and Modal app may appear in those errors; keep the paths off the public internet
if that matters to you.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import probes as health

__all__ = ["live", "ready"]


@never_cache
@require_GET
async def live(request: HttpRequest) -> JsonResponse:
    """The process answers: no I/O, always 200."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
async def ready(request: HttpRequest) -> JsonResponse:
    """Every dependency answered (or cannot be checked): 200; otherwise 503, saying which."""
    report = await health.acheck()
    return JsonResponse(report.as_dict(), status=200 if report.ok else 503)
