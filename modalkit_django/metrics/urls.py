"""Mount with ``path("metrics", include("modalkit_django.metrics.urls"))``."""

from django.urls import path

from . import views

app_name = "modalkit_metrics"
urlpatterns = [path("", views.metrics, name="metrics")]
