"""The API's own ``NinjaAPI``, which ``include("modalkit_django.urls")`` mounts under ``api/``.

Its title and version are the app's, its errors are answered as the router's views expect
(:func:`~.errors.add_error_handlers`), and its views take part in no request transaction
(:func:`outside_request_transactions`) and may be served on the lean ASGI path
(:mod:`modalkit_django.asgi`, :func:`is_lean`). A host that mounts
:func:`~.router.build_router` on a ``NinjaAPI`` of its own gets none of this but the
error answers (``add_error_handlers``): that is the manual path.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

from django.db import connections, transaction
from django.urls import URLPattern, URLResolver
from ninja import NinjaAPI

from .. import __version__
from ..inference.pipeline import InferencePipeline
from .errors import add_error_handlers
from .router import build_router

__all__ = ["BUILT", "URLS_NAMESPACE", "build_api", "is_lean", "lean", "lean_urls", "outside_request_transactions"]

# The namespace of the API's URLs, as reverse() takes them: "modalkit:get_job".
URLS_NAMESPACE = "modalkit"

# Set on the views the lean ASGI path may serve.
_LEAN = "_modalkit_lean"

# The NinjaAPIs build_api() made: the app's own, unlike a host's (the manual path).
BUILT: weakref.WeakSet[NinjaAPI] = weakref.WeakSet()

View = Callable[..., Any]


def build_api(pipeline: type[InferencePipeline] | None = None) -> NinjaAPI:
    """The API for ``pipeline`` (default: ``MODALKIT["PIPELINE"]``), as the app serves it."""
    api = NinjaAPI(
        title="modalkit-django",
        version=__version__,
        description="Run a model now, or queue jobs whose results go to your queues; poll or stream them.",
        urls_namespace=URLS_NAMESPACE,
    )
    add_error_handlers(api)
    api.add_router("/", build_router(pipeline))
    BUILT.add(api)
    return api


def outside_request_transactions(view: View) -> View:
    """Mark ``view`` as taking part in no request transaction, on every database.

    Under ``ATOMIC_REQUESTS`` Django wraps each view in a transaction, and refuses async
    views outright (``RuntimeError``, a 500 for every request). The API's and the health
    views' database work runs on threads of their own anyway (:mod:`.threads`), committed
    as it goes: a request transaction would hold nothing of theirs.
    """
    for alias in connections:
        view = transaction.non_atomic_requests(using=alias)(view)
    return view


def lean_urls(api: NinjaAPI) -> tuple[list[URLResolver | URLPattern], str, str]:
    """``api.urls``, its views marked for the lean ASGI path and outside request transactions."""
    patterns, app_name, namespace = api.urls
    for pattern in _patterns(patterns):
        lean(outside_request_transactions(pattern.callback))
    return patterns, app_name, namespace


def lean(view: View) -> View:
    """Mark ``view`` for the lean ASGI path: an async view that needs no ``MIDDLEWARE``
    (no session, user, CSRF or messages). The API's views, and the benchmark's floor."""
    setattr(view, _LEAN, True)
    return view


def is_lean(view: Any) -> bool:
    """Whether the lean ASGI path may serve ``view`` (marked by :func:`lean`)."""
    return getattr(view, _LEAN, False) is True


def _patterns(patterns: Iterable[Any]) -> Iterable[URLPattern]:
    for pattern in patterns:
        if isinstance(pattern, URLPattern):
            yield pattern
        else:
            yield from _patterns(pattern.url_patterns)
