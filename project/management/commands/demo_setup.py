"""``manage.py demo_setup``: an admin user and an API key for trying the demo.

Run by ``make run``. The password is new on every run and printed, as is a new key.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

import modalkit_django


class Command(BaseCommand):
    help = "Create or reset the demo admin user and print a fresh API key for it."

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        admin, _ = user_model._default_manager.get_or_create(
            username="admin", defaults={"is_staff": True, "is_superuser": True}
        )
        password = secrets.token_urlsafe(9)
        admin.set_password(password)
        admin.is_staff = admin.is_superuser = True
        admin.save()
        # The demo's key may send results to any queue; a new key gets none until granted.
        _, raw_key = modalkit_django.create_api_key(owner=admin, name="demo", allowed_queues=["*"])
        self.stdout.write(f"Admin user: admin / {password}")
        self.stdout.write(f"API key: {raw_key}")
