"""The SQS backend through boto3 against a real SQS endpoint on loopback (moto's server)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from modalkit_django.exceptions import DeliveryError, PermanentDeliveryError
from modalkit_django.queues.base import QueueMessage
from modalkit_django.queues.sqs import SQSBackend

if TYPE_CHECKING:
    from .queue_peers import SQSPeer

pytestmark = pytest.mark.django_db


def sqs_queue(peer: SQSPeer, **options: Any) -> dict[str, Any]:
    return {"BACKEND": "modalkit_django.queues.sqs.SQSBackend", "OPTIONS": {**peer.options, **options}}


def message(queue_name: str, n: int = 0) -> QueueMessage:
    job_id = str(uuid.uuid4())
    return QueueMessage(f"{job_id}:success", queue_name, "success", job_id, {"n": n, "job_id": job_id})


def attributes(received: dict[str, Any]) -> dict[str, str]:
    return {name: value["StringValue"] for name, value in received["MessageAttributes"].items()}


class CallCounter:
    """Counts the API calls a boto3 client makes, by operation name."""

    def __init__(self, client: Any) -> None:
        self.calls: Counter[str] = Counter()
        client.meta.events.register("before-call.sqs.*", self._count)

    def _count(self, model: Any, **kwargs: Any) -> None:
        self.calls[model.name] += 1


def test_a_result_lands_on_its_queue_with_attributes(run_job: Any, use_queues: Any, sqs: SQSPeer) -> None:
    name = sqs.queue_name()
    sqs.create_queue(name)
    use_queues({"sqs": sqs_queue(sqs)}, routes=[("*", "sqs")])
    job = run_job(success_queue=name)

    delivery = job.deliveries.get()
    [received] = sqs.receive_all(name)
    assert (delivery.backend, delivery.status, delivery.attempts) == ("sqs", "sent", 1)
    assert delivery.external_id == received["MessageId"]
    assert json.loads(received["Body"]) == delivery.payload
    assert attributes(received) == {"job_id": str(job.id), "route": "success", "message_id": delivery.message_id}


def test_fifo_messages_are_grouped_by_job_and_deduplicated_by_message_id(
    run_job: Any, retry_delivery: Any, use_queues: Any, sqs: SQSPeer
) -> None:
    name = sqs.queue_name(fifo=True)
    sqs.create_queue(name)
    use_queues({"sqs": sqs_queue(sqs)}, routes=[("*", "sqs")])
    job = run_job(success_queue=name)
    delivery = job.deliveries.get()
    # The same delivery sent again (an operator's redeliver, a lost response): SQS drops it.
    delivery.status = "retrying"
    delivery.save(update_fields=["status"])
    assert retry_delivery(delivery).status == "sent"

    url = sqs.url_of(name)
    [received] = sqs.client.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
    )["Messages"]
    sqs.client.delete_message(QueueUrl=url, ReceiptHandle=received["ReceiptHandle"])
    assert received["Attributes"]["MessageGroupId"] == str(job.id)
    assert received["Attributes"]["MessageDeduplicationId"] == delivery.message_id
    assert sqs.receive_all(name) == []


def test_messages_for_one_queue_go_out_in_batches_of_ten(run_async: Any, sqs: SQSPeer) -> None:
    name, other = sqs.queue_name(), sqs.queue_name()
    sqs.create_queue(name)
    sqs.create_queue(other)
    backend = SQSBackend("sqs", **sqs.options)
    counter = CallCounter(backend.client)
    messages = [message(name, n) for n in range(12)] + [message(other, 99)]

    outcomes = run_async(backend.asend_many, messages)

    assert counter.calls == {"GetQueueUrl": 2, "SendMessageBatch": 2, "SendMessage": 1}
    received = {json.loads(m["Body"])["n"]: m["MessageId"] for m in sqs.receive_all(name)}
    assert sorted(received) == list(range(12))
    # Each result is the SQS id of that very message.
    assert outcomes[:12] == [received[n] for n in range(12)]
    [lone] = sqs.receive_all(other)
    assert outcomes[12] == lone["MessageId"]
    run_async(backend.aclose)


def test_a_batch_over_the_size_limit_is_sent_one_by_one(run_async: Any, sqs: SQSPeer) -> None:
    name = sqs.queue_name()
    sqs.create_queue(name)
    backend = SQSBackend("sqs", **sqs.options)
    counter = CallCounter(backend.client)
    # 3 x 400 KiB: each fits SQS's 1 MiB limit, together they do not.
    messages = [QueueMessage(f"m{n}", name, "success", "j", {"n": n, "pad": "x" * 400_000}) for n in range(3)]

    outcomes = run_async(backend.asend_many, messages)

    assert counter.calls == {"GetQueueUrl": 1, "SendMessageBatch": 1, "SendMessage": 3}
    assert all(isinstance(outcome, str) for outcome in outcomes)
    assert sorted(json.loads(m["Body"])["n"] for m in sqs.receive_all(name)) == [0, 1, 2]
    run_async(backend.aclose)


def test_a_message_over_sqs_limit_is_dead_at_once_saying_why(run_async: Any, sqs: SQSPeer) -> None:
    """A failure message carries the request that failed: a large request makes one SQS
    will never take. Said plainly, and not sent (nor retried) at all; its batchmates go."""
    name = sqs.queue_name()
    sqs.create_queue(name)
    backend = SQSBackend("sqs", **sqs.options)
    counter = CallCounter(backend.client)
    request = {"message": {"text": "x" * 1_100_000}, "success_queue": "", "failure_queue": name, "meta": {}}
    failure = QueueMessage("big", name, "failure", "j", {"status": "error", "original_message": request})
    small = QueueMessage("small", name, "success", "k", {"n": 1})

    big_outcome, small_outcome = run_async(backend.asend_many, [failure, small])

    assert isinstance(big_outcome, PermanentDeliveryError)
    assert "over SQS's limit of 1,048,576" in str(big_outcome) and "original_message" in str(big_outcome)
    assert isinstance(small_outcome, str)
    assert counter.calls == {"GetQueueUrl": 1, "SendMessage": 1}
    run_async(backend.aclose)


def test_the_queue_url_is_looked_up_once(run_async: Any, sqs: SQSPeer) -> None:
    name = sqs.queue_name()
    sqs.create_queue(name)
    backend = SQSBackend("sqs", **sqs.options)
    counter = CallCounter(backend.client)
    run_async(backend.asend, message(name, 1))
    run_async(backend.asend, message(name, 2))
    assert counter.calls == {"GetQueueUrl": 1, "SendMessage": 2}
    run_async(backend.aclose)


def test_a_missing_queue_is_dead_at_once(run_job: Any, use_queues: Any, sqs: SQSPeer) -> None:
    use_queues({"sqs": sqs_queue(sqs)}, routes=[("*", "sqs")])
    delivery = run_job(success_queue=sqs.queue_name("nowhere")).deliveries.get()
    assert (delivery.status, delivery.attempts) == ("dead", 1)
    assert "NonExistentQueue" in delivery.last_error


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
def test_create_missing_creates_the_queue(run_job: Any, use_queues: Any, sqs: SQSPeer, fifo: bool) -> None:
    name = sqs.queue_name(fifo=fifo)
    use_queues(
        {"sqs": sqs_queue(sqs, create_missing=True, queue_attributes={"VisibilityTimeout": "45"})},
        routes=[("*", "sqs")],
    )
    delivery = run_job(success_queue=name).deliveries.get()

    assert delivery.status == "sent"
    created = sqs.client.get_queue_attributes(QueueUrl=sqs.url_of(name), AttributeNames=["All"])["Attributes"]
    assert created["VisibilityTimeout"] == "45"
    assert created.get("FifoQueue", "false") == str(fifo).lower()
    [received] = sqs.receive_all(name)
    assert json.loads(received["Body"]) == delivery.payload


def test_an_invalid_queue_name_is_dead_at_once(run_job: Any, use_queues: Any, sqs: SQSPeer) -> None:
    use_queues({"sqs": sqs_queue(sqs, create_missing=True)}, routes=[("*", "sqs")])
    delivery = run_job(success_queue="no spaces allowed!").deliveries.get()
    assert delivery.status == "dead"
    assert "InvalidParameterValue" in delivery.last_error


def test_a_queue_deleted_after_its_url_was_cached_is_created_again(run_async: Any, sqs: SQSPeer) -> None:
    name = sqs.queue_name()
    backend = SQSBackend("sqs", create_missing=True, **sqs.options)
    run_async(backend.asend, message(name, 1))
    sqs.client.delete_queue(QueueUrl=sqs.url_of(name))
    sqs.queue_urls.clear()

    with pytest.raises(DeliveryError) as failed:
        run_async(backend.asend, message(name, 2))
    assert not isinstance(failed.value, PermanentDeliveryError)  # retried: the next attempt re-creates it
    run_async(backend.asend, message(name, 3))
    assert [json.loads(m["Body"])["n"] for m in sqs.receive_all(name)] == [3]
    run_async(backend.aclose)


def test_explicit_credentials_are_used(run_async: Any, sqs: SQSPeer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    name = sqs.queue_name()
    sqs.create_queue(name)
    without = SQSBackend("sqs", **sqs.options)
    with pytest.raises(DeliveryError, match="Unable to locate credentials"):
        run_async(without.asend, message(name))
    explicit = SQSBackend("sqs", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret", **sqs.options)
    run_async(explicit.asend, message(name))
    assert len(sqs.receive_all(name)) == 1
    run_async(without.aclose)
    run_async(explicit.aclose)
