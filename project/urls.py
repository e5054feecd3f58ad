from django.contrib import admin
from django.urls import include, path
from ninja import NinjaAPI

import modalkit_django
from modalkit_django.api import add_error_handlers, build_router

api = NinjaAPI(title="modalkit-django", version=modalkit_django.__version__, urls_namespace="modalkit")
add_error_handlers(api)
api.add_router("/", build_router())

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    # /health (liveness) and /ready (readiness), for the load balancer and orchestrator.
    path("", include("modalkit_django.urls")),
    # Prometheus; 404 unless MODALKIT["METRICS"]["ENABLED"].
    path("metrics", include("modalkit_django.metrics.urls")),
]
