"""The operations dashboard shown in the admin: numbers, server-side SVG charts, one view."""

from modalkit_django.dashboard.views import dashboard_view

__all__ = ["dashboard_view"]
