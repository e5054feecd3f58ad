"""Load for the scale suite, made the way a host project makes it: ``python -m tests.scale_driver``.

Run in the scale stack's environment (``tests/settings.py``, the stack's database and Redis):

- ``submit COUNT [--run-after-seconds S] [--success-queue Q] [--text T]``: COUNT jobs by
  ``submit_batch``, 1,000 to a batch (one transaction and its wake-ups each), as a producer
  does; with ``--rate R``, one ``submit_job`` at a time, R a second.
- ``finished COUNT --days-ago D``: COUNT jobs that succeeded D days ago, each with its
  result sent to the ``results`` queue: what a purge finds after a month of traffic.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
import uuid

import django
from django.utils import timezone

import modalkit_django  # its names load lazily: after django.setup()

BATCH = 1000


def submit(count: int, *, run_after_seconds: float | None, rate: float | None, success_queue: str, text: str) -> None:
    item: dict[str, object] = {"message": {"text": text}}
    if run_after_seconds is not None:
        item["run_after"] = timezone.now() + dt.timedelta(seconds=run_after_seconds)
    if rate is None:
        for start in range(0, count, BATCH):
            modalkit_django.submit_batch(items=[item] * min(BATCH, count - start), success_queue=success_queue)
        return
    started = time.monotonic()
    for n in range(count):
        time.sleep(max(0.0, started + n / rate - time.monotonic()))
        modalkit_django.submit_job(message={"text": text}, success_queue=success_queue)


def finished(count: int, *, days_ago: float) -> None:
    Job, QueueDelivery = modalkit_django.Job, modalkit_django.QueueDelivery
    at = timezone.now() - dt.timedelta(days=days_ago)
    times = {"created_at": at, "queued_at": at, "started_at": at, "finished_at": at}
    job = {"model_name": "sentiment", "status": "succeeded", "message": {"text": "good"}, "attempts": 1}
    sent = {"route": "success", "backend": "default", "queue_name": "results", "status": "sent", "attempts": 1}
    sent |= {"payload": {"status": "success"}, "sent_at": at, "created_at": at, "attempts_since": at}
    for start in range(0, count, BATCH):
        jobs = Job.objects.bulk_create(
            Job(id=uuid.uuid4(), result={"status": "success"}, success_queue="results", **job, **times)
            for _ in range(min(BATCH, count - start))
        )
        QueueDelivery.objects.bulk_create(
            QueueDelivery(job=row, message_id=f"{row.id}:success", next_attempt_at=None, **sent) for row in jobs
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.scale_driver")
    commands = parser.add_subparsers(dest="command", required=True)
    submitting = commands.add_parser("submit")
    submitting.add_argument("count", type=int)
    submitting.add_argument("--run-after-seconds", type=float)
    submitting.add_argument("--rate", type=float)
    submitting.add_argument("--success-queue", default="")
    submitting.add_argument("--text", default="good")
    finishing = commands.add_parser("finished")
    finishing.add_argument("count", type=int)
    finishing.add_argument("--days-ago", type=float, required=True)
    arguments = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    if arguments.command == "finished":
        finished(arguments.count, days_ago=arguments.days_ago)
        return
    submit(
        arguments.count,
        run_after_seconds=arguments.run_after_seconds,
        rate=arguments.rate,
        success_queue=arguments.success_queue,
        text=arguments.text,
    )


if __name__ == "__main__":
    main()
