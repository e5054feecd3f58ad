"""API keys: bearer tokens that belong to a user. Only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

__all__ = ["ApiKey"]


class ApiKey(models.Model):
    """A bearer key for the API. Only its SHA-256 is stored; the key is shown once."""

    PREFIX = "mk_"

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="modalkit_api_keys")
    prefix = models.CharField(max_length=16, editable=False, help_text="The key's first characters.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

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
