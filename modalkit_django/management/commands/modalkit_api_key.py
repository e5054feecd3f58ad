"""``manage.py modalkit_api_key USERNAME [--name NAME] [--allow-queue PATTERN …]``: create an
API key and print it once."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from modalkit_django.jobs.keys import create_api_key


class Command(BaseCommand):
    help = "Create an API key for a user. The key is printed once and only its hash is stored."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="A label to recognise the key by.")
        parser.add_argument(
            "--allow-queue",
            action="append",
            dest="allowed_queues",
            metavar="PATTERN",
            help='A queue name or pattern ("acme-*", "*") the key may send results to; repeatable. '
            'Default: MODALKIT["API"]["DEFAULT_ALLOWED_QUEUES"].',
        )

    def handle(self, *args: Any, username: str, name: str, allowed_queues: list[str] | None, **options: Any) -> None:
        user_model = get_user_model()
        try:
            owner = user_model._default_manager.get_by_natural_key(username)
        except user_model.DoesNotExist as exc:
            raise CommandError(f"No user {username!r}") from exc
        _, raw_key = create_api_key(owner=owner, name=name, allowed_queues=allowed_queues)
        self.stdout.write(f"API key: {raw_key}")
