"""What a key may submit: granted queues (403), per-key limits (429), and who asked."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

import modalkit_django
from modalkit_django.api.auth import keys
from modalkit_django.jobs.messages import queue_payload
from modalkit_django.models import ApiKey, Job

from . import flow

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def waker(recording_waker: Any) -> Any:
    keys.clear()
    return recording_waker


def client_for(owner: Any, **key_fields: Any) -> tuple[Client, ApiKey]:
    api_key, raw_key = modalkit_django.create_api_key(owner=owner, name="tenant")
    ApiKey.objects.filter(pk=api_key.pk).update(**key_fields)
    api_key.refresh_from_db()
    return Client(headers={"Authorization": f"Bearer {raw_key}"}), api_key


def submit(client: Client, **body: Any) -> Any:
    payload = {"message": {"text": "good"}, **body}
    return client.post("/api/async/predict", data=json.dumps(payload), content_type="application/json")


def predict(client: Client) -> Any:
    return client.post("/api/predict", data=json.dumps({"message": {"text": "good"}}), content_type="application/json")


# --- Granted queues -----------------------------------------------------------------


def test_a_new_key_may_send_results_nowhere_until_granted(user: Any) -> None:
    client, _ = client_for(user)
    assert submit(client).status_code == 202  # no queue: nothing to grant

    response = submit(client, success_queue="other-tenant-results")

    assert response.status_code == 403
    assert response.json() == {
        "detail": "This API key may not send results to the queue 'other-tenant-results'; "
        "an administrator can grant it."
    }
    assert Job.objects.count() == 1


def test_a_grant_names_queues_or_patterns(user: Any) -> None:
    client, _ = client_for(user, allowed_queues=["acme-*", "audit"])
    assert submit(client, success_queue="acme-results", failure_queue="audit").status_code == 202
    assert submit(client, success_queue="acme-results", failure_queue="billing").status_code == 403
    assert submit(client, success_queue="ACME-results").status_code == 403  # patterns are case-sensitive


@flow.with_modalkit(API={"DEFAULT_ALLOWED_QUEUES": ["shared-*"]})
def test_new_keys_get_the_configured_default_grant(user: Any) -> None:
    client, api_key = client_for(user)
    assert api_key.allowed_queues == ["shared-*"]
    assert submit(client, success_queue="shared-results").status_code == 202


def test_the_result_message_says_which_key_and_owner_asked(user: Any) -> None:
    client, api_key = client_for(user, allowed_queues=["*"])
    job = Job.objects.get(id=submit(client, success_queue="q").json()["job_id"])
    [delivery] = flow.finish([(flow.claim_one(job), flow.OUTPUT)])

    assert job.api_key_prefix == api_key.prefix
    assert delivery.payload["submitted_by"] == {"owner_id": user.pk, "api_key": api_key.prefix}
    assert queue_payload(Job(), job.created_at)["submitted_by"] == {"owner_id": None, "api_key": ""}


# --- Per-key limits -----------------------------------------------------------------


def test_a_key_over_its_rate_limit_gets_a_429_with_retry_after(user: Any, other_user: Any) -> None:
    client, _ = client_for(user, rate_limit=2)
    other, _ = client_for(other_user)
    assert [submit(client).status_code for _ in range(2)] == [202, 202]

    refused = submit(client)

    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 61
    assert "may submit 2 jobs a minute" in refused.json()["detail"]
    assert submit(other).status_code == 202  # counted per key
    assert Job.objects.count() == 3


@flow.with_modalkit(API={"RATE_LIMIT_PER_MINUTE": 1})
def test_the_rate_limit_setting_applies_to_keys_without_their_own(user: Any) -> None:
    client, _ = client_for(user)
    assert [submit(client).status_code for _ in range(2)] == [202, 429]


def test_predict_counts_against_the_keys_rate_limit_as_a_submit(user: Any) -> None:
    client, _ = client_for(user, rate_limit=2)
    assert [predict(client).status_code, submit(client).status_code] == [200, 202]
    refused = predict(client)
    assert refused.status_code == 429
    assert "may submit 2 jobs a minute" in refused.json()["detail"]
    assert 1 <= int(refused["Retry-After"]) <= 61


@flow.with_modalkit(API={"RATE_LIMIT_PER_MINUTE": 1})
def test_predict_counts_against_the_rate_limit_setting(user: Any) -> None:
    client, _ = client_for(user)
    assert [predict(client).status_code for _ in range(2)] == [200, 429]


def test_predict_is_refused_while_the_keys_cap_of_waiting_jobs_is_reached(user: Any) -> None:
    client, _ = client_for(user, max_queued_jobs=1)
    [job_id] = [submit(client).json()["job_id"]]
    assert predict(client).status_code == 429
    flow.claim([job_id])
    assert predict(client).status_code == 200


def test_a_key_with_its_cap_of_jobs_waiting_gets_a_429_until_one_runs(user: Any) -> None:
    client, _ = client_for(user, max_queued_jobs=2)
    first, _ = (submit(client).json()["job_id"] for _ in range(2))

    refused = submit(client)
    assert refused.status_code == 429
    assert refused["Retry-After"] == "5"
    assert "2 jobs waiting" in refused.json()["detail"]

    flow.claim([first])  # running: no longer waiting
    assert submit(client).status_code == 202


# --- Bodies -------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-le"])
@pytest.mark.parametrize("url", ["/api/predict", "/api/async/predict", "/api/async/predict/batch"])
def test_a_body_in_utf16_or_utf32_is_a_400(api: Client, url: str, encoding: str) -> None:
    message = {"message": {"text": "good"}}
    body = {"items": [message]} if url.endswith("batch") else message
    response = api.post(url, data=json.dumps(body).encode(encoding), content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {
        "detail": "The request body must be JSON in UTF-8 (RFC 8259), without a UTF-16 or UTF-32 encoding."
    }
    assert not Job.objects.exists()


def test_a_utf8_body_with_a_bom_is_read(api: Client) -> None:
    body = "\ufeff" + json.dumps({"message": {"text": "good"}})
    response = api.post("/api/async/predict", data=body.encode(), content_type="application/json")
    assert response.status_code == 202


# --- Queue names --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a\nb", "a\rb", "a\tb", "a\x1b[31mb", "a\x7fb", "a\x85b"])
def test_queue_names_with_control_characters_are_a_422(api: Client, name: str) -> None:
    response = submit(api, failure_queue=name)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"][-1] == "failure_queue"
    assert "control character" in error["msg"]
    assert not Job.objects.exists()
