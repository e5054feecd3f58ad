"""API keys: bearer tokens that belong to a user. Only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from fnmatch import fnmatchcase

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

__all__ = ["ApiKey", "default_allowed_queues", "queue_allowed"]


def default_allowed_queues() -> list[str]:
    """What a new key may name as ``success_queue``/``failure_queue``:
    ``MODALKIT["API"]["DEFAULT_ALLOWED_QUEUES"]`` (none, unless the project says so).

    Read from the raw setting (``conf`` validates the same key): models stay a leaf that
    does not import the app's configuration."""
    configured = getattr(settings, "MODALKIT", {}).get("API", {}).get("DEFAULT_ALLOWED_QUEUES", [])
    return [str(pattern) for pattern in configured]


class ApiKey(models.Model):
    """A bearer key for the API. Only its SHA-256 is stored; the key is shown once."""

    PREFIX = "mk_"

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="modalkit_api_keys")
    prefix = models.CharField(max_length=16, editable=False, help_text="The key's first characters.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Results are sent only where the key's owner may receive them: without a grant, one
    # tenant could feed made-up results to another's queue or webhook.
    allowed_queues = models.JSONField(
        default=default_allowed_queues,
        blank=True,
        help_text='Queue names (or patterns such as "acme-*") this key may send results to; "*" allows any.',
    )
    rate_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text='Submits per minute; empty: MODALKIT["API"]["RATE_LIMIT_PER_MINUTE"] (default: no limit).',
    )
    max_queued_jobs = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text='Jobs this key may have waiting at once; empty: MODALKIT["API"]["MAX_QUEUED_JOBS"].',
    )

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def digest_of(cls, raw_key: str) -> str:
        # Keys are 256 random bits, so a fast hash is enough (no password stretching).
        return hashlib.sha256(raw_key.encode()).hexdigest()

    def set_new_key(self) -> str:
        """Generate a key, store its digest, and return it (the only time it is seen)."""
        raw_key = self.PREFIX + secrets.token_urlsafe(32)
        self.prefix = raw_key[: len(self.PREFIX) + 6]
        self.digest = self.digest_of(raw_key)
        return raw_key

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def may_send_to(self, queue_name: str) -> bool:
        return queue_allowed(queue_name, self.allowed_queues)


def queue_allowed(queue_name: str, patterns: Sequence[str]) -> bool:
    """Whether ``queue_name`` matches one of ``patterns`` (``fnmatch``, case-sensitive);
    the empty name (no queue) always does."""
    return not queue_name or any(fnmatchcase(queue_name, pattern) for pattern in patterns)
