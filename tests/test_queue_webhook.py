"""The webhook backend against a real loopback receiver; the signatures themselves are in test_webhooks."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from modalkit_django.exceptions import ModalkitImproperlyConfigured, PermanentDeliveryError
from modalkit_django.queues.webhook import WebhookBackend
from modalkit_django.webhooks import generate_secret

if TYPE_CHECKING:
    from .queue_peers import WebhookReceiver

pytestmark = pytest.mark.django_db


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
    assert delivery.last_error.startswith("PermanentDeliveryError (HTTP 401): POST http://127.0.0.1")
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
    error_class = "PermanentDeliveryError" if outcome == "dead" else "DeliveryError"
    assert delivery.last_error.startswith(f"{error_class} (HTTP {status}): ")


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


def test_an_allowed_queue_name_url_is_posted_to(
    run_job: Any, to_receiver: Any, webhook_receiver: WebhookReceiver
) -> None:
    receiver = to_receiver(queue_name_urls=True, allowed_hosts=[f"127.0.0.1:{webhook_receiver.port}"])
    delivery = run_job(success_queue=receiver.url("/by-name?x=1")).deliveries.get()
    assert delivery.status == "sent"
    assert receiver.requests[0].path == "/by-name?x=1"


@pytest.mark.parametrize(
    ("url", "allowed", "error"),
    [
        ("http://localhost:{port}/hook", "127.0.0.1:{port}", "host 'localhost:{port}' is not in allowed_hosts"),
        ("http://user:pw@127.0.0.1:{port}/hook", "127.0.0.1:{port}", "for '127.0.0.1:{port}' carries credentials"),
        ("ftp://127.0.0.1:{port}/hook", "127.0.0.1:{port}", "No webhook URL"),
        # The receiver stands for any other service on an allowed host: Redis, an admin port.
        ("http://127.0.0.1:{port}/hook", "127.0.0.1", "host '127.0.0.1:{port}' is not in allowed_hosts"),
    ],
    ids=["other-host", "credentials", "ftp", "other-port"],
)
def test_a_queue_name_url_outside_allowed_hosts_is_dead_unsent(
    run_job: Any, to_receiver: Any, webhook_receiver: WebhookReceiver, url: str, allowed: str, error: str
) -> None:
    port = webhook_receiver.port
    receiver = to_receiver(queue_name_urls=True, allowed_hosts=[allowed.format(port=port)])
    delivery = run_job(success_queue=url.format(port=port)).deliveries.get()
    assert delivery.status == "dead"
    assert error.format(port=port) in delivery.last_error
    assert receiver.requests == []


def test_allowed_hosts_with_a_leading_dot_cover_the_domain_and_its_subdomains() -> None:
    backend = WebhookBackend("hooks", secret=generate_secret(), queue_name_urls=True, allowed_hosts=[".example.com"])
    for url in ("https://example.com/h", "https://hooks.example.com/h", "https://A.Example.COM/h"):
        assert backend.url_for(url) == url
    for url in ("https://badexample.com/h", "https://example.com.evil.net/h"):
        with pytest.raises(PermanentDeliveryError, match="not in allowed_hosts"):
            backend.url_for(url)


@pytest.mark.parametrize(
    ("allowed", "url", "posted"),
    [
        ("hooks.example.com", "https://hooks.example.com/h", True),
        ("hooks.example.com", "https://hooks.example.com:443/h", True),  # the default, spelt out
        ("hooks.example.com", "http://hooks.example.com/h", True),  # http's default is 80
        ("hooks.example.com", "https://hooks.example.com:6379/h", False),
        ("hooks.example.com", "http://hooks.example.com:6379/h", False),
        ("hooks.example.com", "https://hooks.example.com:80/h", False),  # 80 is not https's default
        ("hooks.example.com:8443", "https://hooks.example.com:8443/h", True),
        ("hooks.example.com:8443", "https://hooks.example.com/h", False),
        ("hooks.example.com:8443", "https://hooks.example.com:8444/h", False),
        (".example.com", "https://a.hooks.example.com/h", True),
        (".example.com", "https://a.hooks.example.com:6379/h", False),
        (".example.com:8443", "https://a.example.com:8443/h", True),
        ("[::1]:8080", "http://[::1]:8080/h", True),
        ("[::1]:8080", "http://[::1]/h", False),
        ("bücher.example", "https://xn--bcher-kva.example/h", True),  # compared in the IDNA form
    ],
)
def test_allowed_hosts_match_the_port_too(allowed: str, url: str, posted: bool) -> None:
    backend = WebhookBackend("hooks", secret=generate_secret(), queue_name_urls=True, allowed_hosts=[allowed])
    if posted:
        assert backend.url_for(url) == url
    else:
        with pytest.raises(PermanentDeliveryError, match=r"host '.+:\d+' is not in allowed_hosts of 'hooks'"):
            backend.url_for(url)


@pytest.mark.parametrize("url", ["http://[::1/h", "https://hooks.example.com:http/h"])
def test_a_queue_name_that_is_no_valid_url_is_dead(url: str) -> None:
    backend = WebhookBackend("hooks", secret=generate_secret(), queue_name_urls=True, allowed_hosts=["[::1]"])
    with pytest.raises(PermanentDeliveryError, match="is not a valid URL"):
        backend.url_for(url)


@pytest.mark.parametrize(
    "allowed", ["https://hooks.example.com", "hooks.example.com/", "hooks.example.com:https", "*", "u@h", "[::1", ""]
)
def test_allowed_hosts_entries_must_be_hosts(allowed: str) -> None:
    with pytest.raises(ModalkitImproperlyConfigured, match=r"'hooks': allowed_hosts entry .* is not a host"):
        WebhookBackend("hooks", secret=generate_secret(), queue_name_urls=True, allowed_hosts=[allowed])


def test_allowed_hosts_must_be_a_list() -> None:
    with pytest.raises(ModalkitImproperlyConfigured, match="must be a list"):
        WebhookBackend("hooks", secret=generate_secret(), queue_name_urls=True, allowed_hosts="hooks.example.com")


def test_queue_name_urls_require_allowed_hosts() -> None:
    with pytest.raises(ModalkitImproperlyConfigured, match="allowed_hosts"):
        WebhookBackend("hooks", secret=generate_secret(), queue_name_urls=True)


def test_configured_urls_must_be_http() -> None:
    with pytest.raises(ModalkitImproperlyConfigured, match="not http"):
        WebhookBackend("hooks", secret=generate_secret(), urls={"q": "file:///etc/passwd"})


def test_the_backend_refuses_a_bad_secret_at_once() -> None:
    with pytest.raises(ModalkitImproperlyConfigured, match=r"'hooks'.*whsec_"):
        WebhookBackend("hooks", secret="hunter2!")
