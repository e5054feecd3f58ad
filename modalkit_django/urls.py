"""Everything a host project serves of the app, in one line of its ``urls.py``::

    path("", include("modalkit_django.urls")),

- ``api/``: the HTTP API, a ``NinjaAPI`` of its own (:mod:`modalkit_django.api.site`):
  its docs at ``api/docs``, its schema at ``api/openapi.json``; reverse its operations
  as ``modalkit:<name>`` (``modalkit:get_job``).
- ``health`` (liveness) and ``ready`` (readiness): see :mod:`modalkit_django.health`;
  reverse them as ``modalkit_health:live`` and ``modalkit_health:ready``. A host that
  mounts the API itself includes them alone: ``include("modalkit_django.health.urls")``.

Under another prefix (``path("jobs/", include(...))``) they move together. Every view here
keeps out of ``ATOMIC_REQUESTS`` transactions; the API's may take the lean ASGI path
(:mod:`modalkit_django.asgi`).
"""

from django.urls import include, path

from .api.site import build_api, lean_urls

api = build_api()

urlpatterns = [
    path("api/", lean_urls(api)),
    path("", include("modalkit_django.health.urls")),
]
