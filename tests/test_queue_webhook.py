"""The webhook backend against a real loopback receiver, and the Standard Webhooks helpers it uses."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from modalkit_django.exceptions import ModalkitImproperlyConfigured, PermanentDeliveryError
from modalkit_django.queues.webhook import WebhookBackend
from modalkit_django.webhooks import WebhookVerificationError, generate_secret, sign, signature_headers, verify

if TYPE_CHECKING:
    from .queue_peers import WebhookReceiver

pytestmark = pytest.mark.django_db

# The test vector published with the Standard Webhooks reference implementations.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


# --- Signing and verifying ---------------------------------------------------------------


def test_signatures_match_the_standard_webhooks_test_vector() -> None:
    assert sign(msg_id=MSG_ID, timestamp=TIMESTAMP, body=BODY, secret=SECRET) == SIGNATURE
    # The prefix is optional, as in the reference implementations.
    assert sign(msg_id=MSG_ID, timestamp=TIMESTAMP, body=BODY, secret=SECRET.removeprefix("whsec_")) == SIGNATURE


def test_verify_accepts_any_matching_signature_and_returns_the_body() -> None:
    headers = {
        "Webhook-Id": MSG_ID,
        "Webhook-Timestamp": str(TIMESTAMP),
        "Webhook-Signature": f"v1,bm9wZQ== {SIGNATURE}",
    }
    assert verify(BODY, headers, SECRET, now=TIMESTAMP + 299) == {"test": 2432232314}


@pytest.mark.parametrize(
    ("changes", "body", "now", "error"),
    [
        ({}, BODY + b" ", TIMESTAMP, "no signature matches"),
        ({"webhook-id": "msg_other"}, BODY, TIMESTAMP, "no signature matches"),
        ({"webhook-signature": "v2," + SIGNATURE[3:]}, BODY, TIMESTAMP, "no signature matches"),
        ({}, BODY, TIMESTAMP + 301, "is too old"),
        ({}, BODY, TIMESTAMP - 301, "is in the future"),
        ({"webhook-timestamp": "soon"}, BODY, TIMESTAMP, "is not an integer"),
        ({"webhook-signature": None}, BODY, TIMESTAMP, "missing header webhook-signature"),
    ],
    ids=["body", "id", "version", "stale", "future", "timestamp", "missing"],
)
def test_verify_rejects_what_was_not_signed_now(
    changes: dict[str, str | None], body: bytes, now: int, error: str
) -> None:
    signed = {"webhook-id": MSG_ID, "webhook-timestamp": str(TIMESTAMP), "webhook-signature": SIGNATURE}
    headers = {name: value for name, value in {**signed, **changes}.items() if value is not None}
    with pytest.raises(WebhookVerificationError, match=error):
        verify(body, headers, SECRET, now=now)


def test_during_a_rotation_each_secret_verifies_alone() -> None:
    old, new = generate_secret(), generate_secret()
    body = b'{"a":1}'
    headers = signature_headers(msg_id="m", body=body, secret=[old, new])
    assert len(headers["webhook-signature"].split()) == 2
    assert verify(body, headers, old) == verify(body, headers, new) == {"a": 1}
    with pytest.raises(WebhookVerificationError):
        verify(body, headers, generate_secret())


@pytest.mark.parametrize(("body", "error"), [(b"[1]", "not a JSON object"), (b"{oops", "not JSON")])
def test_a_signed_body_that_is_not_a_json_object_is_refused(body: bytes, error: str) -> None:
    secret = generate_secret()
    with pytest.raises(WebhookVerificationError, match=error):
        verify(body, signature_headers(msg_id="m", body=body, secret=secret), secret)


@pytest.mark.parametrize(
    ("secret", "error"), [("whsec_not base64!", "whsec_"), ("whsec_", "empty"), ([], "no webhook secret")]
)
def test_secrets_must_be_base64_keys(secret: str | list[str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        sign(msg_id="m", timestamp=1, body=b"", secret=secret)


def test_the_backend_refuses_a_bad_secret_at_once() -> None:
    with pytest.raises(ModalkitImproperlyConfigured, match=r"'hooks'.*whsec_"):
        WebhookBackend("hooks", secret="hunter2!")


# --- The backend against a real receiver ---------------------------------------------------


def hooks(secret: str | list[str], **options: Any) -> dict[str, Any]:
    return {"BACKEND": "modalkit_django.queues.webhook.WebhookBackend", "OPTIONS": {"secret": secret, **options}}


@pytest.fixture
def to_receiver(use_queues: Callable[..., Any], webhook_receiver: WebhookReceiver) -> Callable[..., WebhookReceiver]:
    """Route every queue name to a webhook alias posting ``sentiment_results`` to the receiver."""

    def configure(**options: Any) -> WebhookReceiver:
        options.setdefault("urls", {"sentiment_results": webhook_receiver.url("/sentiment")})
        options.setdefault("secret", webhook_receiver.secret)
        use_queues({"hooks": hooks(**options)}, routes=[("*", "hooks")])
        return webhook_receiver

    return configure


def test_a_result_is_posted_signed_and_verified_by_the_receiver(run_job: Any, to_receiver: Any) -> None:
    receiver = to_receiver(headers={"Authorization": "Bearer t0ken"})
    job = run_job(success_queue="sentiment_results", meta={"request_id": "r-1"})

    delivery = job.deliveries.get()
    assert (delivery.backend, delivery.status, delivery.attempts) == ("hooks", "sent", 1)
    assert delivery.external_id == "received-1"  # the receiver's x-message-id
    [request] = receiver.requests
    assert request.path == "/sentiment"
    assert request.message == delivery.payload  # verified with webhooks.verify on the receiver
    assert json.loads(request.body) == delivery.payload
    assert request.headers["webhook-id"] == delivery.message_id
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == "Bearer t0ken"


def test_without_an_id_header_the_message_id_is_the_external_id(run_job: Any, to_receiver: Any) -> None:
    receiver = to_receiver()
    receiver.statuses.append(202)
    delivery = run_job(success_queue="sentiment_results").deliveries.get()
    assert (delivery.status, delivery.external_id) == ("sent", delivery.message_id)


def test_signed_with_old_and_new_secret_the_receiver_accepts(
    run_job: Any, to_receiver: Any, webhook_receiver: WebhookReceiver
) -> None:
    # The sender has the new secret first; the receiver still knows only the old one.
    to_receiver(secret=[generate_secret(), webhook_receiver.secret])
    assert run_job(success_queue="sentiment_results").deliveries.get().status == "sent"


def test_a_wrong_secret_is_refused_by_the_receiver_and_dead(run_job: Any, to_receiver: Any) -> None:
    receiver = to_receiver(secret=generate_secret())
    delivery = run_job(success_queue="sentiment_results").deliveries.get()
    assert (delivery.status, delivery.attempts) == ("dead", 1)
    assert delivery.last_error.startswith("PermanentDeliveryError: POST http://127.0.0.1")
    assert "answered 401" in delivery.last_error
    assert receiver.requests[0].error == "no signature matches"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(400, "dead"), (404, "dead"), (410, "dead"), (408, "retrying"), (429, "retrying"), (500, "retrying"),
     (503, "retrying"), (302, "retrying")],
)  # fmt: skip
def test_the_answer_decides_between_retry_and_dead(run_job: Any, to_receiver: Any, status: int, outcome: str) -> None:
    to_receiver().statuses.append(status)
    delivery = run_job(success_queue="sentiment_results").deliveries.get()
    assert (delivery.status, delivery.attempts) == (outcome, 1)
    assert f"answered {status}" in delivery.last_error
    assert delivery.last_error.startswith("PermanentDeliveryError" if outcome == "dead" else "DeliveryError")


def test_a_receiver_that_does_not_answer_in_time_is_retried(run_job: Any, to_receiver: Any) -> None:
    receiver = to_receiver(timeout=0.2)
    receiver.responding.clear()
    delivery = run_job(success_queue="sentiment_results").deliveries.get()
    receiver.responding.set()
    assert delivery.status == "retrying"
    assert "ReadTimeout" in delivery.last_error


def test_nobody_listening_is_retried(run_job: Any, use_queues: Any, unused_port: int) -> None:
    url = f"http://127.0.0.1:{unused_port}/hook"
    use_queues({"hooks": hooks(generate_secret(), urls={"q": url})}, routes=[("*", "hooks")])
    delivery = run_job(success_queue="q").deliveries.get()
    assert delivery.status == "retrying"
    assert "ConnectError" in delivery.last_error


# --- Which URL: configured per queue name, or the queue name itself if allowed -------------


def test_a_queue_name_without_a_url_is_dead_at_once(run_job: Any, to_receiver: Any) -> None:
    receiver = to_receiver()
    delivery = run_job(success_queue="elsewhere").deliveries.get()
    assert delivery.status == "dead"
    assert "No webhook URL for queue 'elsewhere'" in delivery.last_error
    assert receiver.requests == []


def test_queue_name_urls_are_refused_unless_enabled(run_job: Any, to_receiver: Any) -> None:
    receiver = to_receiver()
    delivery = run_job(success_queue=receiver.url("/chosen-by-the-client")).deliveries.get()
    assert delivery.status == "dead"
    assert "queue_name_urls is off" in delivery.last_error
    assert receiver.requests == []


def test_an_allowed_queue_name_url_is_posted_to(run_job: Any, to_receiver: Any) -> None:
    receiver = to_receiver(queue_name_urls=True, allowed_hosts=["127.0.0.1"])
    delivery = run_job(success_queue=receiver.url("/by-name?x=1")).deliveries.get()
    assert delivery.status == "sent"
    assert receiver.requests[0].path == "/by-name?x=1"


@pytest.mark.parametrize(
    "url", ["http://localhost:{port}/hook", "http://user:pw@127.0.0.1:{port}/hook", "ftp://127.0.0.1:{port}/hook"]
)
def test_a_queue_name_url_outside_allowed_hosts_is_dead_unsent(run_job: Any, to_receiver: Any, url: str) -> None:
    receiver = to_receiver(queue_name_urls=True, allowed_hosts=["127.0.0.1"])
    delivery = run_job(success_queue=url.format(port=receiver.port)).deliveries.get()
    assert delivery.status == "dead"
    assert receiver.requests == []


def test_allowed_hosts_with_a_leading_dot_cover_the_domain_and_its_subdomains() -> None:
    backend = WebhookBackend("hooks", secret=generate_secret(), queue_name_urls=True, allowed_hosts=[".example.com"])
    for url in ("https://example.com/h", "https://hooks.example.com/h", "https://A.Example.COM/h"):
        assert backend.url_for(url) == url
    for url in ("https://badexample.com/h", "https://example.com.evil.net/h"):
        with pytest.raises(PermanentDeliveryError, match="not in allowed_hosts"):
            backend.url_for(url)


def test_queue_name_urls_require_allowed_hosts() -> None:
    with pytest.raises(ModalkitImproperlyConfigured, match="allowed_hosts"):
        WebhookBackend("hooks", secret=generate_secret(), queue_name_urls=True)


def test_configured_urls_must_be_http() -> None:
    with pytest.raises(ModalkitImproperlyConfigured, match="not http"):
        WebhookBackend("hooks", secret=generate_secret(), urls={"q": "file:///etc/passwd"})
