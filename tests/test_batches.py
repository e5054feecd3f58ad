"""Batches: ``POST /async/predict/batch``, ``GET /batches/{id}`` and the completion message."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.db import DatabaseError, connection
from django.test import Client, override_settings
from django.utils import timezone

import modalkit_django
from modalkit_django.api.auth import keys
from modalkit_django.exceptions import PipelineError
from modalkit_django.jobs import batches, completion
from modalkit_django.models import ApiKey, Batch, Job, QueueDelivery
from modalkit_django.queues.memory import MemoryBackend

from . import flow
from .conftest import wait_until

# The API's database work runs on threads of its own: it sees committed rows only.
pytestmark = pytest.mark.django_db(transaction=True)

OUTPUT = flow.OUTPUT


@pytest.fixture(autouse=True)
def waker(request: pytest.FixtureRequest) -> Any:
    """Wake-ups are recorded, not sent: jobs stay as the API left them (but for the tests
    with a real worker process)."""
    keys.clear()
    if "e2e" in request.keywords:
        return None
    return request.getfixturevalue("recording_waker")


def post_batch(client: Client, body: Any, **headers: str) -> Any:
    return client.post(
        "/api/async/predict/batch", data=json.dumps(body), content_type="application/json", headers=headers
    )


def items(*texts: str, **fields: Any) -> list[dict[str, Any]]:
    return [{"message": {"text": text}, **fields} for text in texts]


def run(job_ids: list[Any], output: Any = OUTPUT) -> list[QueueDelivery]:
    """Claim and finish these jobs as a worker does (completion of their batch included)."""
    return flow.finish([(job, output) for job in flow.claim(job_ids)])


# --- Submitting ---------------------------------------------------------------------------


def test_a_batch_queues_one_job_per_item_in_request_order(api: Client, user: Any, waker: Any) -> None:
    body = {
        "items": [
            {"message": {"text": "one"}},
            {"message": {"text": "two"}, "success_queue": "own", "meta": {"n": 2}},
            {"message": {"text": "three"}, "priority": "high"},
        ],
        "success_queue": "shared",
        "failure_queue": "errors",
        "meta": {"campaign": "c1", "n": 0},
        "completion_queue": "done",
    }
    response = post_batch(api, body)

    assert response.status_code == 202, response.content
    accepted = response.json()
    batch = Batch.objects.get(id=accepted["batch_id"])
    assert (batch.size, batch.completion_queue, batch.owner, batch.meta) == (3, "done", user, body["meta"])
    assert accepted["size"] == 3
    jobs = [Job.objects.get(id=job_id) for job_id in accepted["job_ids"]]
    assert [job.message["text"] for job in jobs] == ["one", "two", "three"]
    assert [job.batch_id for job in jobs] == [batch.id] * 3
    assert [job.success_queue for job in jobs] == ["shared", "own", "shared"]
    assert [job.failure_queue for job in jobs] == ["errors"] * 3
    assert [job.meta for job in jobs] == [
        {"campaign": "c1", "n": 0},
        {"campaign": "c1", "n": 2},
        {"campaign": "c1", "n": 0},
    ]
    assert [job.priority for job in jobs] == [Job.Priority.NORMAL, Job.Priority.NORMAL, Job.Priority.HIGH]
    assert batch.job_ids() == [job.id for job in jobs]
    assert waker.jobs == [[job.id for job in jobs]] and waker.committed == [True]


def test_an_items_schedule_applies_to_its_job_alone(api: Client, waker: Any) -> None:
    later = (timezone.now() + dt.timedelta(hours=1)).isoformat()
    body = {"items": [{"message": {"text": "now"}}, {"message": {"text": "later"}, "run_after": later, "ttl": 60}]}
    now_id, later_id = post_batch(api, body).json()["job_ids"]
    later_job = Job.objects.get(id=later_id)
    assert later_job.run_after is not None and later_job.expires_at is not None
    assert Job.objects.get(id=now_id).run_after is None
    assert waker.jobs == [[uuid.UUID(now_id)]]  # the scheduled one needs none: workers' polls find it


def test_a_batch_is_one_wake_up_for_all_its_jobs(api: Client, waker: Any) -> None:
    job_ids = post_batch(api, {"items": items("a", "b", "c", "d", "e")}).json()["job_ids"]
    assert [[str(job_id) for job_id in chunk] for chunk in waker.jobs] == [job_ids]


def test_an_empty_batch_is_a_422(api: Client) -> None:
    response = post_batch(api, {"items": []})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"][-1] == "items" and error["type"] == "too_short"
    assert not Batch.objects.exists()


def test_more_items_than_max_batch_items_is_a_422(api: Client) -> None:
    with flow.with_modalkit(API={"MAX_BATCH_ITEMS": 3}):
        refused = post_batch(api, {"items": items("a", "b", "c", "d")})
        accepted = post_batch(api, {"items": items("a", "b", "c")})
    assert refused.status_code == 422
    assert refused.json()["detail"] == [
        {"type": "too_long", "loc": ["body", "payload", "items"], "msg": "At most 3 items."}
    ]
    assert accepted.status_code == 202
    assert Job.objects.count() == 3


def test_a_thousand_demo_items_fit_the_default_limits(api: Client) -> None:
    body = {"items": items(*(f"a fairly ordinary review, number {n}, of a film" for n in range(1000)))}
    response = post_batch(api, body)
    assert response.status_code == 202, response.content
    assert len(response.json()["job_ids"]) == 1000


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1_000)
def test_a_batch_over_the_body_size_limit_is_a_413(api: Client) -> None:
    response = post_batch(api, {"items": items(*(f"review {n}" for n in range(50)))})
    assert response.status_code == 413
    assert response.json() == {"detail": "The request body is over 1000 bytes."}
    assert not Batch.objects.exists()


def test_a_bad_item_is_a_422_naming_its_index(api: Client) -> None:
    response = post_batch(api, {"items": [*items("fine", "fine"), {"message": {"text": ""}}]})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"][:6] == ["body", "payload", "items", 2, "message", "text"]
    assert not Job.objects.exists()


def test_an_unknown_field_in_an_item_is_a_422(api: Client) -> None:
    response = post_batch(api, {"items": [{"message": {"text": "x"}, "sucess_queue": "typo"}]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-2:] == [0, "sucess_queue"]


def test_an_items_inconsistent_schedule_is_a_422_naming_it(api: Client) -> None:
    item = {"message": {"text": "x"}, "deadline": "2020-01-01T00:00:00Z"}
    response = post_batch(api, {"items": [*items("fine"), item]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:4] == ["body", "payload", "items", 1]


def test_an_unknown_model_is_a_404(api: Client) -> None:
    response = api.post("/api/async/predict/batch?model_name=nope", data=json.dumps({"items": items("x")}),
                        content_type="application/json")  # fmt: skip
    assert response.status_code == 404
    assert not Batch.objects.exists()


def test_a_failing_insert_leaves_neither_batch_nor_jobs(user: Any, waker: Any) -> None:
    # The database refuses the second item's message (a NUL in jsonb): all or nothing.
    with pytest.raises(DatabaseError):
        batches.submit_batch(items=[{"message": {"text": "ok"}}, {"message": {"text": "bad\x00"}}], owner=user)
    assert not Batch.objects.exists()
    assert not Job.objects.exists()
    assert waker.jobs == []


# --- Grants and limits --------------------------------------------------------------------


def client_for(owner: Any, **key_fields: Any) -> Client:
    api_key, raw_key = modalkit_django.create_api_key(owner=owner, name="tenant")
    ApiKey.objects.filter(pk=api_key.pk).update(**key_fields)
    return Client(headers={"Authorization": f"Bearer {raw_key}"})


@pytest.mark.parametrize(
    "body",
    [
        {"items": items("x"), "completion_queue": "elsewhere"},
        {"items": items("x", success_queue="elsewhere")},
        {"items": items("x"), "failure_queue": "elsewhere"},
    ],
)
def test_every_queue_a_batch_names_must_be_granted(user: Any, body: dict[str, Any]) -> None:
    client = client_for(user, allowed_queues=["results"])
    response = post_batch(client, body)
    assert response.status_code == 403
    assert "'elsewhere'" in response.json()["detail"]
    assert not Batch.objects.exists()
    ok = {"items": items("x", success_queue="results"), "completion_queue": "results"}
    assert post_batch(client, ok).status_code == 202


def test_the_cap_on_waiting_jobs_counts_the_whole_batch(user: Any) -> None:
    client = client_for(user, max_queued_jobs=5)
    modalkit_django.submit_job(message={"text": "x"}, owner=user, api_key_prefix=ApiKey.objects.get().prefix)
    refused = post_batch(client, {"items": items(*"abcde")})
    assert refused.status_code == 429
    assert refused.json()["detail"] == "This API key may have 5 jobs waiting; 1 are, and this batch has 5."
    assert post_batch(client, {"items": items(*"abcd")}).status_code == 202


def test_the_rate_limit_counts_each_item(user: Any) -> None:
    client = client_for(user, rate_limit=5)
    assert post_batch(client, {"items": items(*"abc")}).status_code == 202
    assert post_batch(client, {"items": items(*"abc")}).status_code == 429


# --- Idempotency-Key ------------------------------------------------------------------------


def test_a_repeated_idempotency_key_returns_the_first_batch(api: Client, waker: Any) -> None:
    body = {"items": items("a", "b"), "completion_queue": "done"}
    first = post_batch(api, body, **{"Idempotency-Key": "batch-1"})
    again = post_batch(api, body, **{"Idempotency-Key": "batch-1"})
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert not first.has_header("Idempotent-Replayed")
    assert (Batch.objects.count(), Job.objects.count()) == (1, 2)
    assert len(waker.jobs) == 1


def test_a_repeated_batch_that_spells_out_the_defaults_is_the_same_request(api: Client) -> None:
    terse = {"items": items("a"), "success_queue": "q"}
    spelled_out = {"items": [{"message": {"text": "a"}, "success_queue": "q", "meta": {}, "priority": "normal"}]}
    first = post_batch(api, terse, **{"Idempotency-Key": "same"})
    again = post_batch(api, spelled_out, **{"Idempotency-Key": "same"})
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"


def test_a_reused_idempotency_key_with_another_batch_is_a_409(api: Client) -> None:
    batch_id = post_batch(api, {"items": items("a")}, **{"Idempotency-Key": "k"}).json()["batch_id"]
    response = post_batch(api, {"items": items("b")}, **{"Idempotency-Key": "k"})
    assert response.status_code == 409
    assert response.json() == {
        "detail": f"Idempotency-Key 'k' was used for batch {batch_id} with a different request; use a new key"
    }
    assert Job.objects.count() == 1


def test_idempotency_keys_of_batches_belong_to_their_owner(api: Client, other_user: Any) -> None:
    other = client_for(other_user, allowed_queues=["*"])
    ids = {post_batch(client, {"items": items("a")}, **{"Idempotency-Key": "same"}).json()["batch_id"]
           for client in (api, other)}  # fmt: skip
    assert len(ids) == 2


# --- Reading ------------------------------------------------------------------------------


def test_a_batch_is_counted_by_status_and_completes_once(api: Client, user: Any) -> None:
    accepted = post_batch(api, {"items": items("a", "b", "c"), "completion_queue": "done"}).json()
    job_ids = accepted["job_ids"]
    run(job_ids[:1])
    [running] = flow.claim(job_ids[1:2])

    body = api.get(f"/api/batches/{accepted['batch_id']}").json()
    assert body["counts"] == {"queued": 1, "running": 1, "succeeded": 1, "failed": 0, "canceled": 0, "expired": 0}
    assert (body["done"], body["completed_at"], body["completion"]) == (False, None, None)
    assert body["job_ids"] == job_ids

    [last] = flow.claim(job_ids[2:])
    error = PipelineError("the model cannot read it")
    assert flow.finish([(running, error), (last, error)]) == []  # no failure queue: nothing to send
    completion = QueueDelivery.objects.get(route="batch")
    assert QueueDelivery.objects.due().filter(id=completion.id).exists()  # for the delivery loops

    body = api.get(f"/api/batches/{accepted['batch_id']}").json()
    assert body["counts"] == {"queued": 0, "running": 0, "succeeded": 1, "failed": 2, "canceled": 0, "expired": 0}
    assert body["done"] is True and body["completed_at"] is not None
    assert body["completion"]["queue_name"] == "done"
    assert api.get(f"/api/batches/{accepted['batch_id'].upper()}").json()["completion"] == body["completion"]
    assert completion.message_id == f"{accepted['batch_id']}:batch"
    assert completion.payload["counts"]["failed"] == 2
    assert completion.payload["job_ids"] == job_ids
    assert completion.payload["batch_id"] == accepted["batch_id"]
    assert completion.payload["submitted_by"] == {"owner_id": user.id, "api_key": ApiKey.objects.get().prefix}


def test_a_batchs_jobs_are_listed_in_item_order_a_page_at_a_time(api: Client) -> None:
    accepted = post_batch(api, {"items": items("a", "b", "c", "d", "e")}).json()
    job_ids = accepted["job_ids"]
    run(job_ids[1:2])
    url = f"/api/batches/{accepted['batch_id']}/jobs"

    first = api.get(url, {"limit": 2}).json()
    second = api.get(url, {"limit": 2, "after": first["next"]}).json()
    third = api.get(url, {"limit": 2, "after": second["next"]}).json()
    pages = [first, second, third]
    assert [[job["job_id"] for job in page["jobs"]] for page in pages] == [job_ids[:2], job_ids[2:4], job_ids[4:]]
    assert third["next"] is None
    assert first["jobs"][1]["result"]["sentiment"] == OUTPUT["sentiment"]
    succeeded = api.get(url, {"status": "succeeded"}).json()["jobs"]
    assert [job["job_id"] for job in succeeded] == job_ids[1:2]
    response = api.get(url, {"after": str(uuid.uuid4())})
    assert response.status_code == 404


def test_another_owners_batch_is_a_404(api: Client, other_user: Any) -> None:
    batch = batches.submit_batch(items=[{"message": {"text": "x"}}], owner=other_user).batch
    for batch_id in (batch.id, uuid.uuid4()):
        for url in (f"/api/batches/{batch_id}", f"/api/batches/{batch_id}/jobs"):
            response = api.get(url)
            assert response.status_code == 404
            assert response.json() == {"detail": f"Batch {batch_id} not found"}
    for url in ("/api/batches/not-a-uuid", "/api/batches/not-a-uuid/jobs"):
        assert api.get(url).status_code == 422


# --- Completion ---------------------------------------------------------------------------


def submitted(n: int, **fields: Any) -> tuple[Batch, list[uuid.UUID]]:
    result = batches.submit_batch(items=[{"message": {"text": f"good {i}"}} for i in range(n)], **fields)
    return result.batch, result.job_ids


def test_the_worker_that_finishes_the_last_job_has_the_completion_sent(
    memory_queue: MemoryBackend, run_async: Any
) -> None:
    batch, job_ids = submitted(4, completion_queue="done", success_queue="results")
    run_async(flow.process_batch, job_ids[:2])
    assert set(memory_queue.messages) == {"results"}
    run_async(flow.process_batch, job_ids[2:])
    run_async(flow.send_due)  # the worker nudged its delivery loop

    [message] = memory_queue.messages["done"]
    assert message.route == "batch"
    assert message.payload["counts"]["succeeded"] == 4
    assert message.payload["job_ids"] == [str(job_id) for job_id in job_ids]
    assert QueueDelivery.objects.get(route="batch").status == "sent"
    batch.refresh_from_db()
    assert batch.completed_at is not None


def test_a_batch_without_completion_queue_completes_silently() -> None:
    batch, job_ids = submitted(2)
    assert run(job_ids) == []
    batch.refresh_from_db()
    assert batch.completed_at is not None


def test_the_sweep_completes_a_batch_both_last_workers_left_to_the_other(memory_queue: MemoryBackend) -> None:
    batch, job_ids = submitted(2, completion_queue="done")
    # Two workers finished the last two jobs at once: each checked before the other committed.
    for job in flow.claim(job_ids):
        Job.objects.finish([(job, OUTPUT)], max_attempts=3, retry_backoff_seconds=1, deliveries_for=lambda _: [])
    assert not QueueDelivery.objects.exists()

    result = flow.sweep()
    [delivery] = QueueDelivery.objects.filter(route="batch")
    assert delivery.id in result.deliveries_to_send  # due at once: this sweep hands it over
    flow.sweep()
    assert completion.complete_batches([batch.id]) == []
    assert QueueDelivery.objects.filter(route="batch").count() == 1


def test_cancelling_a_batchs_last_jobs_completes_it_at_the_next_sweep() -> None:
    batch, job_ids = submitted(3, completion_queue="done")
    run(job_ids[:1])
    modalkit_django.cancel_jobs(Job.objects.filter(id__in=job_ids[1:]))
    flow.sweep()
    [delivery] = QueueDelivery.objects.filter(route="batch")
    assert delivery.payload["counts"]["canceled"] == 2
    batch.refresh_from_db()
    assert batch.completed_at is not None


def test_a_batch_with_jobs_left_is_not_completed() -> None:
    batch, job_ids = submitted(2, completion_queue="done")
    run(job_ids[:1])
    flow.sweep()
    assert completion.complete_batches([batch.id]) == []
    batch.refresh_from_db()
    assert batch.completed_at is None


def test_a_completed_batch_goes_once_its_jobs_were_purged() -> None:
    _, job_ids = submitted(2)
    run(job_ids)
    Batch.objects.update(completed_at=timezone.now() - dt.timedelta(seconds=10))
    assert Batch.objects.purge_emptied(older_than=1, limit=10) == 0  # its jobs are still there
    Job.objects.filter(id__in=job_ids).delete()
    assert Batch.objects.purge_emptied(older_than=1, limit=10) == 1
    assert not Batch.objects.exists()


@pytest.mark.django_db(databases=["default", "embedded"])
def test_the_batch_verbs_on_the_embedded_database() -> None:
    # SQLite, the embedded default, takes bulk_create and the ORM's verbs.
    embedded = Batch.objects.db_manager("embedded")
    now = timezone.now()
    batch = Batch(model_name="sentiment", size=2, completion_queue="done")
    jobs = [Job(model_name="sentiment", message={"text": "x"}, batch=batch, queued_at=now) for _ in range(2)]
    embedded.create_with_jobs(batch, jobs)
    assert embedded.filter(id=batch.id).status_counts() == {batch.id: {"queued": 2}}
    assert embedded.all().complete(deliveries_for=lambda _: []) == ([], [])

    Job.objects.db_manager("embedded").filter(batch=batch).update(status="succeeded", finished_at=now)
    completed, _ = embedded.all().complete(deliveries_for=lambda _: [])
    assert completed == [batch] and completed[0].completed_at is not None
    assert embedded.all().complete(deliveries_for=lambda _: []) == ([], [])


# --- OpenAPI ------------------------------------------------------------------------------


def test_openapi_types_the_batch_endpoints(client: Client) -> None:
    schema = client.get("/api/openapi.json").json()
    components = schema["components"]["schemas"]
    request = components["AsyncPredictBatchRequest"]
    assert request["additionalProperties"] is False
    assert request["properties"]["items"]["items"] == {"$ref": "#/components/schemas/AsyncPredictBatchItem"}
    item = components["AsyncPredictBatchItem"]
    assert item["properties"]["message"] == {"$ref": "#/components/schemas/SentimentRequest"}
    # Built from the single request: its fields (and any added later) are an item's too.
    assert set(components["AsyncPredictRequest"]["properties"]) == set(item["properties"])
    post = schema["paths"]["/api/async/predict/batch"]["post"]
    assert post["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BatchAccepted"
    }
    get = schema["paths"]["/api/batches/{batch_id}"]["get"]
    assert get["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/BatchOut"}
    assert set(components["BatchCounts"]["properties"]) == set(Job.Status.values)
    jobs = schema["paths"]["/api/batches/{batch_id}/jobs"]["get"]
    assert jobs["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobPage"}


# --- A real worker process -------------------------------------------------------------------


@pytest.fixture
def redis_queues(redis_client: Any) -> Any:
    """The worker's queues: a Redis list per queue name, under a prefix of this test's own."""
    prefix = f"modalkit-test-{uuid.uuid4().hex[:8]}:"
    backend = {"BACKEND": "modalkit_django.queues.redis.RedisBackend",
               "OPTIONS": {"url": settings.REDIS_URL, "key_prefix": prefix}}  # fmt: skip
    env = {
        "MODALKIT_TEST_QUEUES": json.dumps({"lists": backend}),
        "MODALKIT_TEST_QUEUE_ROUTES": json.dumps([["*", "lists"]]),
    }
    yield env, lambda queue_name: [json.loads(raw) for raw in redis_client.lrange(prefix + queue_name, 0, -1)]
    left = list(redis_client.scan_iter(prefix + "*"))
    if left:
        redis_client.delete(*left)


def run_batch_over_http(live_server: Any, api_key: str, body: dict[str, Any]) -> dict[str, Any]:
    """Submit ``body`` to the live server; return the batch once its completion was sent."""
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {api_key}"}) as http:
        response = http.post("/api/async/predict/batch", json=body)
        assert response.status_code == 202, response.text
        batch_id = response.json()["batch_id"]

        def completed() -> dict[str, Any] | None:
            batch = http.get(f"/api/batches/{batch_id}").json()
            return batch if batch["completion"] and batch["completion"]["status"] == "sent" else None

        batch: dict[str, Any] = wait_until(completed, timeout=90, what="the batch's completion to be sent")
    assert batch["job_ids"] == response.json()["job_ids"]
    return batch


@pytest.mark.e2e
def test_a_batch_runs_on_a_worker_process_and_its_completion_arrives_once(
    start_worker: Any, live_server: Any, api_key: str, redis_queues: Any
) -> None:
    env, messages_on = redis_queues
    start_worker(**env)
    texts = [f"a good film {n}" for n in range(60)] + ["explode"]
    body = {"items": items(*texts), "success_queue": "scored", "failure_queue": "errors", "completion_queue": "done"}
    batch = run_batch_over_http(live_server, api_key, body)

    assert batch["counts"] == {"queued": 0, "running": 0, "succeeded": 60, "failed": 1, "canceled": 0, "expired": 0}
    assert batch["done"] is True and batch["completed_at"] is not None
    [completion] = messages_on("done")
    assert completion["batch_id"] == batch["batch_id"]
    assert completion["counts"]["succeeded"] == 60 and completion["counts"]["failed"] == 1
    assert completion["job_ids"] == batch["job_ids"]
    assert sorted(message["job_id"] for message in messages_on("scored")) == sorted(batch["job_ids"][:60])
    assert [message["job_id"] for message in messages_on("errors")] == batch["job_ids"][60:]


@pytest.mark.e2e
def test_a_batch_runs_on_modal_through_a_worker_process(
    start_worker: Any, live_server: Any, api_key: str, redis_queues: Any, fresh_modal_fake: Any
) -> None:
    env, messages_on = redis_queues
    start_worker(INFERENCE="modal", **env)
    body = {"items": items(*(f"a great film {n}" for n in range(20))), "completion_queue": "done"}
    batch = run_batch_over_http(live_server, api_key, body)

    assert batch["counts"]["succeeded"] == 20
    [completion] = messages_on("done")
    assert completion["job_ids"] == batch["job_ids"]
    assert fresh_modal_fake.stats.inputs == 20
    assert fresh_modal_fake.stats.calls_per_input == 1.0


@pytest.mark.skipif(settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql", reason="PostgreSQL")
def test_whether_a_batch_is_done_is_one_probe_however_many_of_its_jobs_finished() -> None:
    """Asked after every finish: walking the batch's finished jobs made a 100,000-job
    batch's life O(n²). The partial index on its unfinished jobs answers it at once."""
    batch, job_ids = submitted(3000)
    Job.objects.filter(id__in=job_ids[1:]).update(status="succeeded")  # one job left to finish
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Job._meta.db_table}")
        sql, params = Batch.objects.filter(id=batch.id).done().query.sql_with_params()
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
        [[plan]] = cursor.fetchall()

    def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield node
        for child in node.get("Plans", []):
            yield from nodes(child)

    probes = [node for node in nodes(plan[0]["Plan"]) if node.get("Index Name") == "modalkit_job_batch_open_idx"]
    assert probes, "the completion check did not use the index of a batch's unfinished jobs"
    assert all(node["Actual Rows"] <= 1 for node in probes)  # the unfinished one, not 2,999 finished
    assert not Batch.objects.filter(id=batch.id).done().exists()
    Job.objects.filter(id=job_ids[0]).update(status="failed")
    assert Batch.objects.filter(id=batch.id).done().exists()
