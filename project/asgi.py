"""The demo's ASGI application, for `make serve` (uvicorn): the API on its lean path."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from modalkit_django.asgi import get_asgi_application

application = get_asgi_application()
