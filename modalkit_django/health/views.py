"""``GET /health`` (liveness) and ``GET /ready`` (readiness), for load balancers and orchestrators.

Mount them with ``path("", include("modalkit_django.urls"))``. ``/ready`` answers 503
only when this process cannot serve: the database does not answer, migrations are not
applied, or the configuration fails a system check. A broker, queue backend or Modal that
does not answer makes it 200 with ``"status": "degraded"`` (submits are still accepted
and wait in the database); ``/ready?strict=1`` answers 503 for those too, for alerts.

They need no authentication and reveal nothing secret: which checks passed, how long each
took and, for a failed one, its error with any credentials in URLs masked
(:func:`~modalkit_django.redaction.redact_text`). Hosts and ports of your database,
Redis and Modal app may appear in those errors; keep the paths off the public internet
if that matters to you. The log says when and why readiness changes, one line each time.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import probes as health

__all__ = ["live", "ready"]

logger = logging.getLogger(__name__)

STRICT_VALUES = frozenset({"1", "true", "yes", "on"})

# What this process last reported: a line is logged when it changes, not at every probe.
_last_problems: tuple[str, ...] = ()


@never_cache
@require_GET
async def live(request: HttpRequest) -> JsonResponse:
    """The process answers: no I/O, always 200."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
async def ready(request: HttpRequest) -> JsonResponse:
    """200 while this process can serve (``"status": "ok"`` or ``"degraded"``); 503 when it
    cannot (``"error"``), or with ``?strict=1`` when any check failed. Says which."""
    report = await health.acheck()
    strict = request.GET.get("strict", "").lower() in STRICT_VALUES
    _log_changes(report)
    return JsonResponse(report.as_dict(), status=200 if report.passes(strict=strict) else 503)


def _log_changes(report: health.Report) -> None:
    global _last_problems
    problems = tuple(f"{check.name}: {check.error}" for check in report.checks if check.status == "error")
    if problems == _last_problems:
        return
    _last_problems = problems
    if not report.ready:
        logger.error("Not ready, /ready answers 503: %s", "; ".join(problems))
    elif problems:
        logger.warning("Ready but degraded: %s", "; ".join(problems))
    else:
        logger.warning("Ready: every check passes again")
