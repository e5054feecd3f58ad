"""The operator's view: jobs, deliveries, batches and workers are read-only rows; actions
go through services; API keys are made here.

One module per page: :mod:`.jobs`, :mod:`.deliveries`, :mod:`.batches`, :mod:`.workers`,
:mod:`.keys`. Every list stays fast at millions of rows (:mod:`.paging`: estimated or
capped counts; :mod:`.filters`: choices from configuration, exact-match boxes; searches
by primary key), and bulk actions confirm first and run set-based (:mod:`.actions`).
"""

from .batches import BatchAdmin
from .deliveries import QueueDeliveryAdmin
from .jobs import DeliveryInline, JobAdmin
from .keys import ApiKeyAdmin, QueuePatternsField
from .workers import WorkerHeartbeatAdmin

__all__ = [
    "ApiKeyAdmin",
    "BatchAdmin",
    "DeliveryInline",
    "JobAdmin",
    "QueueDeliveryAdmin",
    "QueuePatternsField",
    "WorkerHeartbeatAdmin",
]
