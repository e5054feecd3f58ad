"""Queue peers that fail, for real: deliveries retry, die when they must, and are redelivered.

The retries are driven in this process (make a delivery due, run the sweep and the
delivery task), except the last test, where a real worker does all of it.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

import modalkit_django
from modalkit_django.models import QueueDelivery

from . import flow
from .conftest import wait_until

if TYPE_CHECKING:
    from .queue_peers import SQSPeer, SQSServer, WebhookReceiver


def sqs_alias(sqs: SQSPeer) -> dict[str, Any]:
    return {
        "sqs": {"BACKEND": "modalkit_django.queues.sqs.SQSBackend", "OPTIONS": {**sqs.options, "connect_timeout": 1}}
    }


def webhook_alias(receiver: WebhookReceiver) -> dict[str, Any]:
    return {
        "hooks": {
            "BACKEND": "modalkit_django.queues.webhook.WebhookBackend",
            "OPTIONS": {"secret": receiver.secret, "urls": {"sentiment_results": receiver.url()}},
        }
    }


@pytest.mark.django_db
def test_sqs_down_then_back_every_message_lands_exactly_once(
    run_async: Any, use_queues: Any, sqs: SQSPeer, sqs_server: SQSServer
) -> None:
    name = sqs.queue_name()
    sqs.create_queue(name)
    use_queues(sqs_alias(sqs), routes=[("*", "sqs")])
    jobs = [modalkit_django.submit_job(message={"text": f"good {n}"}, success_queue=name) for n in range(3)]

    sqs_server.stop()
    run_async(flow.process_batch, [str(job.id) for job in jobs])
    deliveries = list(QueueDelivery.objects.all())
    assert {(d.status, d.attempts) for d in deliveries} == {("retrying", 1)}
    assert all("Could not connect to the endpoint URL" in d.last_error for d in deliveries)

    # Still down when the retries come due: each attempt counts, nothing is lost.
    QueueDelivery.objects.update(next_attempt_at=timezone.now())
    for delivery_id in flow.due_deliveries():
        run_async(flow.deliver, str(delivery_id))
    assert set(QueueDelivery.objects.values_list("status", "attempts")) == {("retrying", 2)}

    sqs_server.start()
    QueueDelivery.objects.update(next_attempt_at=timezone.now())
    due = flow.due_deliveries()
    assert sorted(due) == sorted(d.id for d in deliveries)
    for delivery_id in due:
        run_async(flow.deliver, str(delivery_id))
    # A late duplicate of a delivery task sends nothing more.
    run_async(flow.deliver, str(due[0]))

    sent = {d.job_id: d for d in QueueDelivery.objects.all()}
    assert {(d.status, d.attempts) for d in sent.values()} == {("sent", 3)}
    received = sqs.receive_all(name)
    assert sorted(json.loads(m["Body"])["job_id"] for m in received) == sorted(str(job.id) for job in jobs)
    assert {m["MessageId"] for m in received} == {d.external_id for d in sent.values()}


@pytest.mark.django_db
def test_a_webhook_answering_500_twice_is_sent_on_the_third_attempt(
    run_job: Any, retry_delivery: Any, use_queues: Any, webhook_receiver: WebhookReceiver
) -> None:
    use_queues(webhook_alias(webhook_receiver), routes=[("*", "hooks")])
    webhook_receiver.statuses.extend([500, 500])

    delivery = run_job(success_queue="sentiment_results").deliveries.get()
    assert (delivery.status, delivery.attempts) == ("retrying", 1)
    assert "answered 500 Internal Server Error" in delivery.last_error
    assert (retry_delivery(delivery).status, delivery.attempts) == ("retrying", 2)
    assert (retry_delivery(delivery).status, delivery.attempts) == ("sent", 3)

    requests = webhook_receiver.requests
    assert [request.status for request in requests] == [500, 500, 200]
    # Every attempt was signed afresh and verified by the receiver, under one webhook-id.
    assert all(request.message == delivery.payload for request in requests)
    assert {request.headers["webhook-id"] for request in requests} == {delivery.message_id}
    assert delivery.external_id == "received-3"


@pytest.mark.django_db(transaction=True)
def test_a_failing_queue_kills_the_delivery_visibly_then_redeliver_sends_it(
    run_job: Any,
    retry_delivery: Any,
    run_async: Any,
    use_queues: Any,
    webhook_receiver: WebhookReceiver,
    api: Client,
    admin_client: Client,
    user: Any,
    recording_waker: Any,  # this test runs the delivery task itself
) -> None:
    use_queues(webhook_alias(webhook_receiver), routes=[("*", "hooks")], DELIVERY={"MAX_ATTEMPTS": 3})
    webhook_receiver.statuses.extend([503] * 100)  # down for good, until fixed

    job = run_job(success_queue="sentiment_results", owner=user)
    delivery = job.deliveries.get()
    retry_delivery(delivery)
    assert (retry_delivery(delivery).status, delivery.attempts) == ("dead", 3)
    assert job.status == "succeeded"  # the result is safe whatever the queue does

    [shown] = api.get(f"/api/jobs/{job.id}").json()["deliveries"]
    assert (shown["status"], shown["attempts"], shown["backend"]) == ("dead", 3, "hooks")
    assert shown["last_error"] == "DeliveryError (HTTP 503)"  # the URL is for operators only
    changelist = reverse("admin:modalkit_django_queuedelivery_changelist")
    page = admin_client.get(changelist, {"status__exact": "dead"}).content.decode()
    assert str(delivery.id) in page
    assert "DeliveryError (HTTP 503): POST http://127.0.0.1" in page

    webhook_receiver.statuses.clear()  # fixed
    # post=yes: what the action's confirmation page sends back.
    admin_client.post(changelist, {"action": "redeliver", "_selected_action": [str(delivery.id)], "post": "yes"})
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    assert recording_waker.deliveries == [[delivery.id]]
    # What the delivery task that redeliver wakes does:
    run_async(flow.deliver, str(delivery.id))
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 1)
    assert [request.status for request in webhook_receiver.requests] == [503, 503, 503, 200]
    assert api.get(f"/api/jobs/{job.id}").json()["deliveries"][0]["status"] == "sent"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_worker_retries_until_sqs_is_back(
    start_worker: Any, use_queues: Any, worker_env: Any, sqs: SQSPeer, sqs_server: SQSServer
) -> None:
    name = sqs.queue_name()
    sqs.create_queue(name)
    modalkit = use_queues(sqs_alias(sqs), routes=[("*", "sqs")])
    start_worker(**worker_env(modalkit))

    sqs_server.stop()
    job = modalkit_django.submit_job(message={"text": "good"}, success_queue=name)
    wait_until(
        lambda: QueueDelivery.objects.filter(job=job, status="retrying").first(),
        timeout=30,
        what="the first attempt to fail",
    )
    sqs_server.start()

    delivery = wait_until(
        lambda: QueueDelivery.objects.filter(job=job, status="sent").first(),
        timeout=30,
        what="the sweep and the delivery task to send it",
    )
    assert delivery.attempts >= 2
    [received] = sqs.receive_all(name)
    assert json.loads(received["Body"])["job_id"] == str(job.id)
    assert received["MessageId"] == delivery.external_id


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_stopping_worker_finishes_the_sends_it_started(
    start_worker: Any, use_queues: Any, worker_env: Any, webhook_receiver: WebhookReceiver
) -> None:
    modalkit = use_queues(webhook_alias(webhook_receiver), routes=[("*", "hooks")])
    worker = start_worker(**worker_env(modalkit))
    webhook_receiver.responding.clear()  # the receiver takes the POST, then holds its answer
    job = modalkit_django.submit_job(message={"text": "good"}, success_queue="sentiment_results")
    wait_until(lambda: webhook_receiver.requests, what="the POST to arrive")

    threading.Timer(4.0, webhook_receiver.responding.set).start()
    worker.stop()  # SIGTERM while the POST is in flight

    delivery = QueueDelivery.objects.get(job_id=job.id)
    # Recorded as the receiver saw it: sent once, not failed and sent again later.
    assert (delivery.status, delivery.attempts, delivery.external_id) == ("sent", 1, "received-1")
    assert len(webhook_receiver.requests) == 1
