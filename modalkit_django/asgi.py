"""The ASGI application: the API's own routes on a lean path, everything else on Django's handler.

In ``asgi.py``::

    from modalkit_django.asgi import get_asgi_application

    application = get_asgi_application()

Django's ASGI handler runs each request in a context of its own thread and calls every
``MIDDLEWARE`` that is not natively async (all of Django's own) through a thread hop,
before and after the view: measured here, about thirty hops and two thread starts per
request, most of a submit's cost, and the reason throughput fell as clients were added.
Bearer-token API requests need none of it (no session, CSRF cookie or messages), so a
request whose path resolves to one of the API's views as ``include("modalkit_django.urls")``
mounts them (wherever it is mounted) goes to :class:`ApiHandler`: the same request, view
and error handling, on the event loop, with no per-request thread; its URL is resolved
once, here. What ``SecurityMiddleware`` does (``SECURE_SSL_REDIRECT``, HSTS, ``nosniff``,
the referrer and cross-origin policies) is still applied, in place. Every other path (the
admin, your pages, your own APIs, beside ours under ``/api/`` or not) is Django's handler
with your ``MIDDLEWARE``, unchanged. Paths are resolved with ``ROOT_URLCONF``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import warnings
from contextlib import closing
from typing import Any, cast

import django
from django.conf import settings
from django.core import signals
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.middleware.security import SecurityMiddleware
from django.urls import ResolverMatch, get_resolver, set_script_prefix

__all__ = ["ApiHandler", "get_asgi_application"]

Scope = dict[str, Any]


class ApiHandler(ASGIHandler):
    """Django's ASGI handler without its per-request thread and without ``MIDDLEWARE``.

    Views must be async (the API's are); their synchronous database work runs on a
    bounded pool of threads that give their connections back after every call
    (:mod:`modalkit_django.threads`). ``request_started`` and ``request_finished`` are
    sent as Django sends them, from the event loop.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)  # type: ignore[attr-defined]
        self._security = SecurityMiddleware(lambda request: HttpResponse())

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await self.serve(scope, receive, send)

    async def serve(self, scope: Scope, receive: Any, send: Any, match: ResolverMatch | None = None) -> None:
        """Answer the request; ``match``: its URL, if already resolved."""
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        if (too_big := _declared_too_big(scope)) is not None:
            # Refused before reading it: Django would spool the whole body to disk first.
            await self.send_response(too_big, send)
            return
        body_file = await self.read_body(receive)
        with closing(body_file):
            set_script_prefix(get_script_prefix(scope))
            signals.request_started.send(sender=self.__class__, scope=scope)
            request, error = self.create_request(scope, body_file)
            response: HttpResponseBase
            if request is None:
                assert error is not None
                # Django's answer is an HTML page; an API client gets the API's JSON shape.
                response = _json_error(error.status_code, error.reason_phrase)
            else:
                request.resolver_match = match
                # SecurityMiddleware's checks and headers are plain computation: no hop needed.
                response = self._security.process_request(request) or await self.get_response_async(request)
                response = self._security.process_response(request, cast(HttpResponse, response))
            if response.streaming:
                # A stream (GET /jobs/{id}/events) must end when its client goes away: the
                # server drops what is sent after that without a word.
                await _send_until_disconnect(self.send_response(response, send), receive)
            else:
                await self.send_response(response, send)
            response.close()  # sends request_finished

    def resolve_request(self, request: HttpRequest) -> ResolverMatch:
        # Resolved once, by the application that chose this path.
        return request.resolver_match or super().resolve_request(request)


async def _send_until_disconnect(sending: Any, receive: Any) -> None:
    """Await ``sending`` in this task; a disconnect cancels it (the stream stops polling)."""
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def listen() -> None:
        nonlocal gone
        if (await receive())["type"] == "http.disconnect":
            gone = True
            current.cancel()

    listener = asyncio.ensure_future(listen())
    try:
        await sending
    except asyncio.CancelledError:
        if not gone:
            raise
        current.uncancel()
    finally:
        listener.cancel()


def _json_error(status: int, detail: str) -> HttpResponse:
    return HttpResponse(json.dumps({"detail": detail}), status=status, content_type="application/json")


def _declared_too_big(scope: Scope) -> HttpResponse | None:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and limit is not None and value.isdigit() and int(value) > limit:
            return _json_error(413, f"The request body is over {limit} bytes.")
    return None


def get_asgi_application(*, api_prefix: str | None = None) -> Any:
    """The project's ASGI application: a request for one of the API's views takes the
    lean path (:class:`ApiHandler`), every other request Django's handler.

    ``api_prefix`` is deprecated and ignored: which requests are the API's is read from
    the URLconf (what ``include("modalkit_django.urls")`` mounts), wherever it is.
    """
    if api_prefix is not None:
        warnings.warn(
            "get_asgi_application(api_prefix=...) is ignored: the lean path serves the API's own URLs "
            "(include('modalkit_django.urls')), wherever they are mounted; drop the argument.",
            DeprecationWarning,
            stacklevel=2,
        )
    django.setup(set_prefix=False)
    from .api.site import is_lean

    pages = ASGIHandler()
    api = ApiHandler()
    # What start-up made (settings, URLs, models, schemas) lives as long as the process:
    # move it out of the garbage collector's way, so that its full passes, which otherwise
    # walk all of it, stay short and do not stretch the slowest requests.
    gc.collect()
    gc.freeze()

    async def application(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (match := _resolve(scope)) is not None and is_lean(match.func):
            await api.serve(scope, receive, send, match)
        else:
            await pages(scope, receive, send)

    return application


def _resolve(scope: Scope) -> ResolverMatch | None:
    """The view ``scope``'s path resolves to, as Django's handler would resolve it; ``None``
    if none does, or if resolving fails: Django's handler then answers, and reports it."""
    path = scope["path"]
    script_name = get_script_prefix(scope).rstrip("/")
    if script_name and (path.startswith(script_name + "/") or path == script_name):
        path = path[len(script_name) :]
    try:
        return get_resolver().resolve(path)
    except Exception:  # Resolver404, or a URLconf that does not load: Django's handler says which
        return None
