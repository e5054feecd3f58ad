import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

application = get_wsgi_application()

# Connect to the broker now; with the in-process broker this also starts the
# embedded worker and its sweep, so queued jobs left from a restart resume.
from modalkit_django import broker  # noqa: E402

broker.start()
