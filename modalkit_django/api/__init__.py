"""The HTTP API: a ninja ``Router``, served by a ``NinjaAPI`` of its own (:mod:`.site`) that
``include("modalkit_django.urls")`` mounts under ``api/``.

The manual path, for a host that wants the router on a ``NinjaAPI`` of its own::

    from ninja import NinjaAPI
    from modalkit_django.api import add_error_handlers, build_router

    api = add_error_handlers(NinjaAPI())  # the API's error answers, for its routes only
    api.add_router("/", build_router())

Views parse input, call one service and shape the answer; domain errors become HTTP
errors in one place (:mod:`.errors`).
"""

from .auth import Caller
from .errors import add_error_handlers, http_errors
from .router import build_router

__all__ = ["Caller", "add_error_handlers", "build_router", "http_errors"]
