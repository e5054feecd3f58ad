"""Queue deliveries: one message to one queue, and the transitions of its ledger.

::

    pending ──send──▶ sent
       │
       └──send fails──▶ retrying ──send──▶ sent
                           │  ▲
                           └──┘ (backoff with jitter)
                           └──out of attempts, too old, or a permanent error──▶ dead
    any ──redeliver──▶ pending (a fresh attempt budget)

Every attempt is recorded with a compare-and-set on ``attempts`` and ``attempts_since``
(values that only grow within a budget, and a new budget starts later), so an attempt that
finishes late never overwrites what another recorded, or an operator's redelivery,
meanwhile. Every due time and age is the database's clock (``now()``).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from django.db import connections, models, transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from ..exceptions import PermanentDeliveryError
from ..redaction import redact_text
from . import sql
from .jobs import Job
from .states import SEND_FIELDS, UNSENT_DELIVERY_STATUSES, DeliveryRoute, DeliveryStatus, save_rows

__all__ = ["DeliveryPolicy", "DeliveryQuerySet", "QueueDelivery", "SendResult"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendResult:
    """What happened to one attempt to send a delivery."""

    delivery: QueueDelivery
    external_id: str | None = None
    error: BaseException | None = None


class DeliveryPolicy(Protocol):
    """How long and how often a delivery is retried: ``MODALKIT["DELIVERY"]`` is one."""

    @property
    def max_attempts(self) -> int | None: ...
    @property
    def backoff_seconds(self) -> float: ...
    @property
    def max_backoff_seconds(self) -> float: ...
    @property
    def max_age_seconds(self) -> float: ...


class DeliveryQuerySet(models.QuerySet["QueueDelivery"]):
    def unsent(self) -> DeliveryQuerySet:
        return self.filter(status__in=UNSENT_DELIVERY_STATUSES)

    def due(self) -> DeliveryQuerySet:
        """Unsent and due for an attempt, by the database's clock."""
        return self.unsent().filter(next_attempt_at__lte=Now())

    def claim_due(self, *, claim_seconds: float, limit: int) -> list[QueueDelivery]:
        """Up to ``limit`` deliveries due for an attempt, longest-due first, each left to its
        caller for ``claim_seconds`` (then due again, should the caller die meanwhile)."""
        with transaction.atomic(savepoint=False, using=self.db):
            ids = list(
                self.due()
                .order_by("next_attempt_at")
                .select_for_update(skip_locked=True)
                .values_list("id", flat=True)[:limit]
            )
            manager = self.model._default_manager.using(self.db)
            manager.filter(id__in=ids).update(next_attempt_at=Now() + dt.timedelta(seconds=claim_seconds))
            return list(manager.filter(id__in=ids))

    def record(self, results: Iterable[SendResult], *, policy: DeliveryPolicy) -> None:
        """Record a batch of send attempts: sent, retrying with backoff, or dead.

        A delivery recorded or redelivered by someone else since this attempt began
        keeps what they wrote (compare-and-set on its attempts and its budget's start).
        """
        attempted = {result.delivery.id: result for result in results}
        if not attempted:
            return
        previous = [(result.delivery.attempts, result.delivery.attempts_since) for result in attempted.values()]
        deliveries = [result.delivery.record(result, policy) for result in attempted.values()]
        if connections[self.db].vendor == "postgresql":
            written = sql.record(
                self.model, deliveries, previous, max_age_seconds=policy.max_age_seconds, using=self.db
            )
        else:
            written = self._record_through_the_orm(deliveries, previous, policy)
        for delivery in deliveries:
            if written.get(delivery.id) == DeliveryStatus.DEAD:
                delivery.status = DeliveryStatus.DEAD
                error = redact_text(delivery.last_error)  # logs are read by more people than the admin
                logger.error("Delivery %s to %r is dead: %s", delivery.id, delivery.queue_name, error)

    def _record_through_the_orm(
        self, deliveries: list[QueueDelivery], previous: list[tuple[int, dt.datetime]], policy: DeliveryPolicy
    ) -> dict[uuid.UUID, str]:
        now = timezone.now()
        written = {}
        with transaction.atomic(savepoint=False, using=self.db):
            unsent = self.select_for_update().unsent().filter(id__in=[delivery.id for delivery in deliveries])
            current = {
                id: (attempts, since) for id, attempts, since in unsent.values_list("id", "attempts", "attempts_since")
            }
            kept = [d for d, before in zip(deliveries, previous, strict=True) if current.get(d.id) == before]
            for delivery in kept:
                if delivery.status == DeliveryStatus.SENT:
                    delivery.sent_at = now
                elif delivery.status == DeliveryStatus.RETRYING:
                    retry_at = now + dt.timedelta(seconds=delivery.retry_delay)
                    too_old = retry_at - delivery.attempts_since > dt.timedelta(seconds=policy.max_age_seconds)
                    delivery.status = DeliveryStatus.DEAD if too_old else delivery.status
                    delivery.next_attempt_at = None if too_old else retry_at
                written[delivery.id] = delivery.status
            save_rows(QueueDelivery, kept, SEND_FIELDS, using=self.db)
        return written

    def redeliver(self) -> list[uuid.UUID]:
        """Send these again, whatever their status, each with a fresh budget: attempts from
        zero, its age counted from now. They are due at once, for the delivery loops.

        Their jobs are locked too, so that a purge deciding at the same moment that a job's
        deliveries are all settled waits for this and sees the delivery due again
        (:meth:`JobQuerySet.purge_finished`).
        """
        with transaction.atomic(savepoint=False, using=self.db):
            # Jobs first, then their deliveries: the order a purge locks them in.
            jobs = Job.objects.using(self.db).filter(id__in=self.values("job_id")).order_by("id")
            list(jobs.select_for_update().values_list("id", flat=True))
            ids = list(self.select_for_update().values_list("id", flat=True))
            self.model._default_manager.using(self.db).filter(id__in=ids).update(
                status=DeliveryStatus.PENDING,
                attempts=0,
                attempts_since=Now(),
                next_attempt_at=Now(),
            )
        return ids


class QueueDelivery(models.Model):
    """One message to one queue: the job's result on its success or failure route."""

    Route = DeliveryRoute
    Status = DeliveryStatus
    UNSENT = UNSENT_DELIVERY_STATUSES

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="deliveries")
    route = models.CharField(max_length=8, choices=Route.choices)
    queue_name = models.CharField(max_length=255)
    backend = models.CharField(max_length=100, help_text="Alias in MODALKIT['QUEUES'].")
    # Stable across retries and redeliveries, so consumers can drop duplicates.
    message_id = models.CharField(max_length=100, unique=True)
    payload = models.JSONField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # Start of the current attempt budget (MAX_AGE_SECONDS): creation, or the last redelivery.
    # Every time of a delivery is the database's, as is every time it is compared with.
    attempts_since = models.DateTimeField(db_default=Now())
    last_error = models.TextField(blank=True)
    # Due at once when made, unless its maker keeps it a while to send it itself (``for_job``).
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_default=Now())
    sent_at = models.DateTimeField(null=True, blank=True)
    external_id = models.CharField(max_length=255, blank=True, help_text="Id the queue gave the message.")
    created_at = models.DateTimeField(db_default=Now())

    objects = DeliveryQuerySet.as_manager()

    # Not stored: seconds until the retry a failed attempt asks for (``record``).
    retry_delay = 0.0

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "queue deliveries"
        permissions = [("redeliver_queuedelivery", "Can redeliver results")]
        indexes = [
            models.Index(fields=["-created_at"], name="modalkit_delivery_created_idx"),
            # The admin's filters, newest first.
            models.Index(fields=["status", "-created_at"], name="modalkit_delivery_status_idx"),
            models.Index(fields=["backend", "-created_at"], name="modalkit_delivery_backend_idx"),
            models.Index(fields=["queue_name", "-created_at"], name="modalkit_delivery_queue_idx"),
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status__in=UNSENT_DELIVERY_STATUSES),
                name="modalkit_delivery_due_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=DeliveryStatus.values), name="modalkit_delivery_status_valid"
            ),
            models.CheckConstraint(condition=Q(route__in=DeliveryRoute.values), name="modalkit_delivery_route_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.route} → {self.queue_name} ({self.status})"

    def record(self, result: SendResult, policy: DeliveryPolicy) -> QueueDelivery:
        """Apply one attempt's result in memory (``DeliveryQuerySet.record`` saves it, with
        the database's times: when it was sent, when a retry is due, whether it is too old)."""
        self.attempts += 1
        if result.error is None:
            self.status = DeliveryStatus.SENT
            self.external_id = result.external_id or ""
            self.next_attempt_at = None
            return self
        self.last_error = f"{error_label(result.error)}: {result.error}"[:2000]
        # Doubling, capped, with jitter so that a receiver coming back is not hit by every
        # retry at the same instant.
        delay = min(policy.max_backoff_seconds, policy.backoff_seconds * 2 ** min(self.attempts - 1, 64))
        self.retry_delay = delay * random.uniform(0.5, 1.0)
        out_of_attempts = policy.max_attempts is not None and self.attempts >= policy.max_attempts
        if isinstance(result.error, PermanentDeliveryError) or out_of_attempts:
            self.status = DeliveryStatus.DEAD
            self.next_attempt_at = None
        else:
            self.status = DeliveryStatus.RETRYING
        return self

    @classmethod
    def for_job(
        cls, job: Job, *, backend: str, payload: dict[str, Any], now: dt.datetime | None = None, claim: float = 0.0
    ) -> QueueDelivery:
        """The delivery of a finished job on its route, due at once by the database's clock;
        or, given ``now``, due ``claim`` seconds after it, left meanwhile to the worker that
        sends it first (whose finish statement turns those times into the database's)."""
        succeeded = job.status == Job.Status.SUCCEEDED
        route = DeliveryRoute.SUCCESS if succeeded else DeliveryRoute.FAILURE
        values = {
            "job_id": job.id,
            "route": route,
            "queue_name": job.success_queue if succeeded else job.failure_queue,
            "backend": backend,
            "message_id": f"{job.id}:{route}" + (f":rerun{job.reruns}" if job.reruns else ""),
            "payload": payload,
        }
        if now is not None:
            values.update(next_attempt_at=now + dt.timedelta(seconds=claim), created_at=now, attempts_since=now)
        # Positional, the other fields at their defaults: Model.__init__'s fast path, half
        # the cost of keyword arguments (a worker makes one per finished job).
        row: list[Any] = [values[name] if name in values else field.get_default() for name, field in _fields(cls)]
        delivery = cls(*row)  # type: ignore[misc]  # django-stubs reads *row as the first field
        cls.job.field.set_cached_value(delivery, job)
        return delivery


@functools.cache
def _fields(model: type[models.Model]) -> list[tuple[str, models.Field[Any, Any]]]:
    return [(field.attname, field) for field in model._meta.concrete_fields]


def error_label(error: BaseException) -> str:
    """What precedes the colon in ``last_error``, all the API shows of it: the error's
    class, and the receiver's HTTP status when it answered one."""
    status_code = getattr(error, "status_code", None)
    return f"{type(error).__name__} (HTTP {status_code})" if status_code else type(error).__name__
