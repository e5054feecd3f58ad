"""Batches: many jobs submitted in one request, counted and completed together."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

__all__ = ["Batch"]


class Batch(models.Model):
    """The request behind ``POST /async/predict/batch``; its jobs point here."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model_name = models.CharField(max_length=100)
    size = models.PositiveIntegerField(help_text="How many jobs the batch holds.")
    # Where one message goes when the last job finishes; empty: nowhere.
    completion_queue = models.CharField(max_length=255, blank=True)
    meta = models.JSONField(default=dict, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="modalkit_batches",
    )
    api_key_prefix = models.CharField(max_length=16, blank=True)
    idempotency_key = models.CharField(max_length=255, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # When its last job finished (and its completion message, if any, was recorded).
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "batches"
        indexes = [
            models.Index(fields=["-created_at"], name="modalkit_batch_created_idx"),
            # The sweep's completion check: batches not completed yet.
            models.Index(fields=["created_at"], condition=Q(completed_at__isnull=True), name="modalkit_batch_open_idx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="modalkit_batch_idempotency_key_unique",
            ),
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=~Q(idempotency_key="") & Q(owner__isnull=True),
                name="modalkit_batch_idempotency_key_unowned_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_name} batch {self.id} ({self.size} jobs)"
