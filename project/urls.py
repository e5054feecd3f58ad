from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # The API under api/ (docs at api/docs), /health (liveness) and /ready (readiness).
    path("", include("modalkit_django.urls")),
    # Prometheus; 404 unless MODALKIT["METRICS"]["ENABLED"].
    path("metrics", include("modalkit_django.metrics.urls")),
]
