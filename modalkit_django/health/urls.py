"""``/health`` and ``/ready`` alone: ``path("", include("modalkit_django.health.urls"))``.

``include("modalkit_django.urls")`` mounts them with the API; this URLconf is for a host
that mounts the API's router on a ``NinjaAPI`` of its own (the manual path). Reverse them
as ``modalkit_health:live`` and ``modalkit_health:ready``. They take part in no
``ATOMIC_REQUESTS`` transaction: Django refuses async views in one.
"""

from django.urls import path

from ..api.site import outside_request_transactions
from . import views

app_name = "modalkit_health"

urlpatterns = [
    path("health", outside_request_transactions(views.live), name="live"),
    path("ready", outside_request_transactions(views.ready), name="ready"),
]
