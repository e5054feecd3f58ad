"""The app's models: jobs, their queue deliveries, API keys, and the sweep's state.

Postgres is the source of truth: a broker message only wakes a worker up, so every
state a job or delivery can be in is a row that the sweep can find again. The
transitions between states are QuerySet verbs (``Job.objects.claim(...)``,
``QueueDelivery.objects.record(...)``), set-based, in :mod:`.jobs` and :mod:`.deliveries`;
every raw SQL statement is in :mod:`.sql`.
"""

from .batches import Batch
from .deliveries import DeliveryPolicy, DeliveryQuerySet, QueueDelivery, SendResult
from .jobs import Job, JobOutput, JobQuerySet, Prediction
from .keys import ApiKey
from .states import FINISHED_JOB_STATUSES, JobPriority, JobStatus
from .sweeps import SweepState
from .workers import WorkerHeartbeat

__all__ = [
    "FINISHED_JOB_STATUSES",
    "ApiKey",
    "Batch",
    "DeliveryPolicy",
    "DeliveryQuerySet",
    "Job",
    "JobOutput",
    "JobPriority",
    "JobQuerySet",
    "JobStatus",
    "Prediction",
    "QueueDelivery",
    "SendResult",
    "SweepState",
    "WorkerHeartbeat",
]
