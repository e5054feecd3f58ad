"""URLs a host project includes: ``path("", include("modalkit_django.urls"))``.

``/health`` answers while the process runs (a liveness probe); ``/ready`` checks the
database, the broker, the queue backends and Modal (a readiness probe), see
:mod:`modalkit_django.health`. Reverse them as ``modalkit_health:live`` and
``modalkit_health:ready``.
"""

from django.urls import path

from .health import views as health_views

app_name = "modalkit_health"

urlpatterns = [
    path("health", health_views.live, name="live"),
    path("ready", health_views.ready, name="ready"),
]
