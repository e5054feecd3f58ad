"""The HTTP API: every success and every client mistake, with its status and message."""

from __future__ import annotations

import json
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client, override_settings
from django.urls import path
from django.utils import timezone
from ninja import NinjaAPI

import modalkit_django
from modalkit_django import broker
from modalkit_django.api import auth, build_router
from modalkit_django.jobs import queries
from modalkit_django.jobs.keys import authenticate_api_key
from modalkit_django.models import Job, QueueDelivery

from . import flow
from .conftest import wait_until

# The API's database work runs on threads of its own (modalkit_django.api.threads), as in
# production: it sees committed rows only, so these tests commit.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def waker(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Wake-ups are recorded, not sent: jobs stay as the API left them (but where a test
    asks for the in-process broker, to watch one run, this process serves as the web
    process of the embedded default does, its worker included)."""
    if "in_process_broker" not in request.keywords:
        yield request.getfixturevalue("recording_waker")
        return
    broker.start()
    yield None
    broker.reset()


def post(client: Client, url: str, body: Any) -> Any:
    return client.post(url, data=json.dumps(body), content_type="application/json")


def assert_no_traceback(response: Any) -> None:
    assert response["Content-Type"].startswith("application/json")
    assert "Traceback" not in response.content.decode()


# --- /predict ---------------------------------------------------------------------


def test_predict_returns_the_models_output(api: Client) -> None:
    response = post(api, "/api/predict", {"message": {"text": "what a great day"}})
    assert response.status_code == 200
    assert response.json() == {"status": "success", "error": None, "sentiment": "positive", "confidence": 0.95}


def test_predict_names_the_invalid_field(api: Client) -> None:
    response = post(api, "/api/predict", {"message": {"txt": "typo"}})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"][-2:] == ["message", "text"]
    assert error["msg"] == "Field required"


def test_predict_rejects_extra_fields(api: Client) -> None:
    response = post(api, "/api/predict", {"message": {"text": "x"}, "success_queue": "q"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "success_queue"


def test_predict_pipeline_error_is_a_502_with_the_message(api: Client) -> None:
    response = post(api, "/api/predict", {"message": {"text": "explode"}})
    assert response.status_code == 502
    assert response.json() == {"detail": "the model cannot read 'explode'"}
    assert_no_traceback(response)


def test_unknown_model_is_a_404(api: Client) -> None:
    response = post(api, "/api/predict?model_name=gpt-9", {"message": {"text": "x"}})
    assert response.status_code == 404
    assert response.json() == {"detail": "Unknown model 'gpt-9'; available: sentiment"}
    response = post(api, "/api/async/predict?model_name=gpt-9", {"message": {"text": "x"}})
    assert response.status_code == 404
    assert not Job.objects.exists()


def test_model_name_selects_the_model(api: Client) -> None:
    response = post(api, "/api/async/predict?model_name=sentiment", {"message": {"text": "x"}})
    assert response.status_code == 202
    assert Job.objects.get().model_name == "sentiment"


def test_malformed_json_is_a_400(api: Client) -> None:
    response = api.post("/api/predict", data="{nope", content_type="application/json")
    assert response.status_code == 400
    assert "Cannot parse request body" in response.json()["detail"]


# --- authentication ---------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer mk_wrong"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}],
)
def test_missing_or_bad_key_is_a_401(headers: dict[str, str]) -> None:
    client = Client(headers=headers)
    for response in (
        post(client, "/api/predict", {"message": {"text": "x"}}),
        post(client, "/api/async/predict", {"message": {"text": "x"}}),
        client.get(f"/api/jobs/{uuid.uuid4()}"),
    ):
        assert response.status_code == 401
        assert response.json() == {"detail": "Unauthorized"}
    assert not Job.objects.exists()


def test_revoked_key_is_a_401(user: Any) -> None:
    api_key, raw_key = modalkit_django.create_api_key(owner=user, name="old")
    client = Client(headers={"Authorization": f"Bearer {raw_key}"})
    assert post(client, "/api/predict", {"message": {"text": "x"}}).status_code == 200
    api_key.revoked_at = api_key.created_at
    api_key.save()
    assert post(client, "/api/predict", {"message": {"text": "x"}}).status_code == 401


def test_inactive_users_key_is_a_401(user: Any, api: Client) -> None:
    user.is_active = False
    user.save()
    assert post(api, "/api/predict", {"message": {"text": "x"}}).status_code == 401


def test_only_the_digest_of_a_key_is_stored(user: Any) -> None:
    api_key, raw_key = modalkit_django.create_api_key(owner=user, name="k")
    api_key.refresh_from_db()
    assert raw_key.startswith("mk_")
    assert raw_key not in {api_key.digest, api_key.prefix, api_key.name}
    assert raw_key.startswith(api_key.prefix)
    assert len(api_key.digest) == 64


def test_static_modalkit_key_from_auth_config(tmp_path: Path) -> None:
    config = tmp_path / "modalkit.yaml"
    text = (
        (Path(settings.BASE_DIR) / "modalkit.yaml")
        .read_text()
        .replace("app_settings:\n", "app_settings:\n  auth_config: {api_key: s3cret, auth_header: x-api-key}\n", 1)
    )
    config.write_text(text)
    with override_settings(MODALKIT={**settings.MODALKIT, "CONFIG": config}):
        static_api = NinjaAPI(urls_namespace=f"static-{uuid.uuid4().hex}")
        static_api.add_router("/", build_router())
        urlconf = types.ModuleType("static_urls")
        urlconf.urlpatterns = [path("api/", static_api.urls)]  # type: ignore[attr-defined]
        with override_settings(ROOT_URLCONF=urlconf):
            assert (
                post(Client(headers={"x-api-key": "s3cret"}), "/api/predict", {"message": {"text": "x"}}).status_code
                == 200
            )
            assert (
                post(Client(headers={"x-api-key": "wrong"}), "/api/predict", {"message": {"text": "x"}}).status_code
                == 401
            )
            job_id = post(
                Client(headers={"x-api-key": "s3cret"}), "/api/async/predict", {"message": {"text": "x"}}
            ).json()["job_id"]
            assert Job.objects.get(id=job_id).owner is None


# --- /async/predict ----------------------------------------------------------------


def test_async_predict_stores_a_queued_job_and_wakes_a_worker_once_it_is_committed(
    api: Client, user: Any, recording_waker: Any
) -> None:
    body = {"message": {"text": "good"}, "success_queue": "ok_q", "failure_queue": "err_q", "meta": {"id": 7}}
    response = post(api, "/api/async/predict", body)
    assert response.status_code == 202
    data = response.json()
    job = Job.objects.get(id=data["job_id"])
    assert data == {
        "job_id": str(job.id),
        "status": "queued",
        "model_name": "sentiment",
        "created_at": data["created_at"],
    }
    assert (job.status, job.message, job.meta, job.owner) == ("queued", {"text": "good"}, {"id": 7}, user)
    assert (job.success_queue, job.failure_queue) == ("ok_q", "err_q")
    # The wake-up went out after the row was committed (it was already readable then).
    assert recording_waker.jobs == [[job.id]]
    assert recording_waker.committed == [True]


def test_async_predict_queues_are_optional(api: Client) -> None:
    response = post(api, "/api/async/predict", {"message": {"text": "good"}})
    assert response.status_code == 202
    job = Job.objects.get()
    assert (job.success_queue, job.failure_queue, job.meta) == ("", "", {})


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"message": {"text": "x"}, "callback": "http://x"}, ["callback"]),
        ({"success_queue": "q"}, ["message"]),
        ({"message": {"text": ""}}, ["message", "text"]),
        ({"message": {"text": "x"}, "meta": [1, 2]}, ["meta"]),
        ({"message": {"text": "x"}, "success_queue": "q" * 256}, ["success_queue"]),
    ],
)
def test_async_predict_validation_errors_name_the_field(api: Client, body: dict[str, Any], loc: list[str]) -> None:
    response = post(api, "/api/async/predict", body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-len(loc) :] == loc
    assert not Job.objects.exists()


@pytest.mark.in_process_broker
def test_async_job_runs_on_the_in_process_broker(api: Client) -> None:
    """The embedded default on Postgres: the job runs in this process after commit."""
    job_id = post(api, "/api/async/predict", {"message": {"text": "love it"}, "success_queue": "q"}).json()["job_id"]
    wait_until(lambda: api.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded", what="the job")
    body = api.get(f"/api/jobs/{job_id}").json()
    assert body["result"]["sentiment"] == "positive"
    wait_until(lambda: api.get(f"/api/jobs/{job_id}").json()["deliveries"][0]["status"] == "sent", what="delivery")


# --- /jobs/{id} --------------------------------------------------------------------


def test_job_shows_status_result_meta_timestamps_and_deliveries(api: Client, user: Any) -> None:
    job = modalkit_django.submit_job(message={"text": "good"}, success_queue="q", meta={"k": "v"}, owner=user)
    [job] = flow.claim([job.id])
    [delivery] = flow.finish([(job, {"status": "success", "sentiment": "positive", "confidence": 0.5})])
    body = api.get(f"/api/jobs/{job.id}").json()
    assert body["status"] == "succeeded"
    assert body["result"] == {"status": "success", "error": None, "sentiment": "positive", "confidence": 0.5}
    assert body["meta"] == {"k": "v"}
    assert body["attempts"] == 1
    assert body["created_at"] and body["started_at"] and body["finished_at"]
    assert body["deliveries"] == [
        {
            "route": "success",
            "queue_name": "q",
            "backend": "memory",
            "message_id": f"{job.id}:success",
            "status": "pending",
            "attempts": 0,
            "last_error": "",
            "next_attempt_at": body["deliveries"][0]["next_attempt_at"],
            "sent_at": None,
        }
    ]
    assert delivery.status == QueueDelivery.Status.PENDING


def test_failed_job_shows_its_error(api: Client, user: Any) -> None:
    job = modalkit_django.submit_job(message={"text": "x"}, owner=user)
    [job] = flow.claim([job.id])
    from modalkit_django.exceptions import PipelineError

    flow.finish([(job, PipelineError("boom", error_type="ValueError"))])
    body = api.get(f"/api/jobs/{job.id}").json()
    assert (body["status"], body["result"], body["error"]) == (
        "failed",
        None,
        {"type": "ValueError", "message": "boom"},
    )


def test_unknown_job_is_a_404(api: Client) -> None:
    job_id = uuid.uuid4()
    response = api.get(f"/api/jobs/{job_id}")
    assert response.status_code == 404
    assert response.json() == {"detail": f"Job {job_id} not found"}


@pytest.mark.parametrize("url", ["/api/jobs/{}", "/api/jobs/{}/cancel", "/api/jobs/{}/events"])
@pytest.mark.parametrize("job_id", ["not-a-uuid", "1"])
def test_a_job_id_that_is_not_a_uuid_is_a_422(api: Client, url: str, job_id: str) -> None:
    response = (api.post if url.endswith("cancel") else api.get)(url.format(job_id))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["loc"], error["type"]) == (["path", "job_id"], "uuid_parsing")


def test_someone_elses_job_is_a_404(api: Client, other_user: Any) -> None:
    job = modalkit_django.submit_job(message={"text": "secret"}, owner=other_user)
    response = api.get(f"/api/jobs/{job.id}")
    assert response.status_code == 404
    assert "secret" not in response.content.decode()
    assert post(api, f"/api/jobs/{job.id}/cancel", {}).status_code == 404
    assert Job.objects.get(id=job.id).status == "queued"


# --- cancel ------------------------------------------------------------------------


def test_cancel_a_queued_job_tells_its_failure_queue(api: Client, user: Any) -> None:
    job = modalkit_django.submit_job(message={"text": "x"}, failure_queue="errs", owner=user)
    response = post(api, f"/api/jobs/{job.id}/cancel", {})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "canceled"
    assert body["error"]["type"] == "Canceled"
    assert body["deliveries"][0]["route"] == "failure"
    assert body["deliveries"][0]["queue_name"] == "errs"


def test_cancel_a_finished_job_is_a_409(api: Client, user: Any) -> None:
    job = modalkit_django.submit_job(message={"text": "x"}, owner=user)
    [job] = flow.claim([job.id])
    response = post(api, f"/api/jobs/{job.id}/cancel", {})
    assert response.status_code == 409
    assert response.json() == {"detail": f"Cannot cancel job {job.id}: it is running"}


# --- OpenAPI -----------------------------------------------------------------------


def test_openapi_documents_the_models_types_and_auth(client: Client) -> None:
    schema = client.get("/api/openapi.json").json()
    components = schema["components"]["schemas"]
    assert components["SentimentRequest"]["properties"]["text"]["type"] == "string"
    assert "sentiment" in components["SentimentResponse"]["properties"]
    job = components["Job"]["properties"]["result"]
    assert {"$ref": "#/components/schemas/SentimentResponse"} in job["anyOf"]
    assert components["AsyncPredictRequest"]["additionalProperties"] is False
    assert "BearerAuth" in str(schema["components"]["securitySchemes"]) or schema["components"]["securitySchemes"]
    assert client.get("/api/docs").status_code == 200


def test_the_schema_is_valid_openapi_with_short_operation_ids_and_uuid_paths(client: Client) -> None:
    from openapi_spec_validator import validate

    schema = client.get("/api/openapi.json").json()
    validate(schema)  # OpenAPI 3.1, strictly: no keyword of a later version
    assert schema["openapi"] == "3.1.0"
    assert (schema["info"]["title"], schema["info"]["version"]) == ("modalkit-django", modalkit_django.__version__)
    paths = schema["paths"].items()
    operations = {(method.upper(), route): operation for route, item in paths for method, operation in item.items()}
    assert {key: operation["operationId"] for key, operation in operations.items()} == {
        ("POST", "/api/predict"): "predict",
        ("POST", "/api/async/predict"): "submit_job",
        ("GET", "/api/jobs"): "list_jobs",
        ("GET", "/api/jobs/{job_id}"): "get_job",
        ("POST", "/api/jobs/{job_id}/cancel"): "cancel_job",
        ("GET", "/api/jobs/{job_id}/events"): "stream_job_events",
        ("POST", "/api/async/predict/batch"): "submit_batch",
        ("GET", "/api/batches/{batch_id}"): "get_batch",
        ("GET", "/api/batches/{batch_id}/jobs"): "list_batch_jobs",
    }
    for operation in operations.values():
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                assert parameter["schema"]["format"] == "uuid", parameter


# --- Idempotency-Key -------------------------------------------------------------------


def test_a_repeated_idempotency_key_returns_the_first_job(api: Client, waker: Any) -> None:
    body = {"message": {"text": "good"}, "success_queue": "q", "meta": {"n": 1}}
    first = api.post("/api/async/predict", data=json.dumps(body), content_type="application/json",
                     headers={"Idempotency-Key": "order-42"})  # fmt: skip
    again = api.post("/api/async/predict", data=json.dumps(body), content_type="application/json",
                     headers={"Idempotency-Key": "order-42"})  # fmt: skip
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert not first.has_header("Idempotent-Replayed")
    assert Job.objects.count() == 1
    assert waker.jobs == [[Job.objects.get().id]]  # one job, one wake-up


def test_a_reused_idempotency_key_with_another_request_is_a_409(api: Client) -> None:
    def send(text: str) -> Any:
        return api.post("/api/async/predict", data=json.dumps({"message": {"text": text}}),
                        content_type="application/json", headers={"Idempotency-Key": "k"})  # fmt: skip

    job_id = send("good").json()["job_id"]
    response = send("bad")
    assert response.status_code == 409
    assert response.json() == {
        "detail": f"Idempotency-Key 'k' was used for job {job_id} with a different request; use a new key"
    }
    assert Job.objects.count() == 1


def test_idempotency_keys_belong_to_their_owner(api: Client, other_user: Any) -> None:
    _, other_key = modalkit_django.create_api_key(owner=other_user, name="b")
    other = Client(headers={"Authorization": f"Bearer {other_key}"})
    for client in (api, other):
        response = client.post("/api/async/predict", data=json.dumps({"message": {"text": "good"}}),
                               content_type="application/json", headers={"Idempotency-Key": "same"})  # fmt: skip
        assert response.status_code == 202
    assert Job.objects.filter(idempotency_key="same").count() == 2


def test_an_overlong_idempotency_key_is_a_422(api: Client) -> None:
    response = api.post("/api/async/predict", data=json.dumps({"message": {"text": "good"}}),
                        content_type="application/json", headers={"Idempotency-Key": "k" * 256})  # fmt: skip
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


# --- GET /jobs ---------------------------------------------------------------------------


def test_list_jobs_pages_through_the_callers_jobs_newest_first(api: Client, user: Any, other_user: Any) -> None:
    mine = [modalkit_django.submit_job(message={"text": f"t{n}"}, owner=user) for n in range(5)]
    modalkit_django.submit_job(message={"text": "not mine"}, owner=other_user)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"before": cursor} if cursor else {})}
        page = api.get("/api/jobs", params).json()
        seen += [job["job_id"] for job in page["jobs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [str(job.id) for job in reversed(mine)]


def test_list_jobs_filters_by_status_and_model(api: Client, user: Any) -> None:
    queued = modalkit_django.submit_job(message={"text": "a"}, owner=user)
    running = flow.claim([modalkit_django.submit_job(message={"text": "b"}, owner=user).id])[0]
    assert [job["job_id"] for job in api.get("/api/jobs", {"status": "running"}).json()["jobs"]] == [str(running.id)]
    assert [job["job_id"] for job in api.get("/api/jobs", {"status": "queued"}).json()["jobs"]] == [str(queued.id)]
    assert api.get("/api/jobs", {"model_name": "other"}).json() == {"jobs": [], "next": None}


@pytest.mark.parametrize(("params", "status"), [({"status": "done"}, 422), ({"limit": 0}, 422), ({"limit": 101}, 422),
                                                ({"before": "nope"}, 422),
                                                ({"before": "00000000-0000-0000-0000-000000000000"}, 404)])  # fmt: skip
def test_list_jobs_rejects_bad_parameters(api: Client, params: dict[str, Any], status: int) -> None:
    assert api.get("/api/jobs", params).status_code == status


# --- what JSON columns cannot hold is a 422, not a 500 ---------------------------------------


@pytest.mark.parametrize(
    ("raw_body", "loc", "problem"),
    [
        ('{"message": {"text": "x"}, "meta": {"score": NaN}}', "meta", "the number nan"),
        ('{"message": {"text": "x"}, "meta": {"score": 1e999}}', "meta", "the number inf"),
        ('{"message": {"text": "x"}, "meta": {"k\\u0000": 1}}', "meta", "a NUL character"),
        ('{"message": {"text": "a\\u0000b"}}', "message", "a NUL character"),
        ('{"message": {"text": "x"}, "success_queue": "q\\u0000"}', "success_queue", "the control character '\\x00'"),
    ],
)
def test_unstorable_json_is_a_422_naming_the_field(api: Client, raw_body: str, loc: str, problem: str) -> None:
    response = api.post("/api/async/predict", data=raw_body, content_type="application/json")
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"][-1] == loc
    assert problem in error["msg"]
    assert not Job.objects.exists()


def test_a_nul_in_a_query_or_header_is_a_422(api: Client) -> None:
    assert api.get("/api/jobs", {"model_name": "a\x00b"}).status_code == 422
    response = api.post("/api/async/predict", data=json.dumps({"message": {"text": "x"}}),
                        content_type="application/json", headers={"Idempotency-Key": "a\x00b"})  # fmt: skip
    assert response.status_code == 422


def test_any_other_inference_error_on_predict_is_a_502(api: Client) -> None:
    from modalkit_django.clients import get_inference_backend
    from modalkit_django.exceptions import InferenceError

    modalkit = {**settings.MODALKIT, "INFERENCE": {"BACKEND": "tests.doubles.ScriptedInference"}}
    with override_settings(MODALKIT=modalkit):
        backend = get_inference_backend()
        backend.script = lambda messages: [InferenceError("output expired", error_type="OutputExpiredError")]  # type: ignore[attr-defined]
        response = post(api, "/api/predict", {"message": {"text": "x"}})
    assert response.status_code == 502
    assert response.json() == {"detail": "output expired"}


def test_a_database_that_is_away_is_a_503_with_retry_after(api: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import OperationalError

    def unavailable(**kwargs: Any) -> None:
        raise OperationalError("the database system is shutting down")

    monkeypatch.setattr(queries, "get_job", unavailable)
    response = api.get(f"/api/jobs/{uuid.uuid4()}")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json() == {"detail": "The service is briefly unavailable; retry shortly."}


def test_a_key_is_looked_up_once_per_cache_period_and_a_revocation_holds_after_it(
    api: Client, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from modalkit_django.api.auth import keys
    from modalkit_django.models import ApiKey

    lookups: list[str] = []
    real_lookup = authenticate_api_key

    def counted(*, raw_key: str) -> Any:
        lookups.append(raw_key)
        return real_lookup(raw_key=raw_key)

    monkeypatch.setattr(auth, "authenticate_api_key", counted)
    keys.clear()
    with override_settings(MODALKIT={**settings.MODALKIT, "API": {"KEY_CACHE_SECONDS": 0.5}}):
        assert api.get(f"/api/jobs/{uuid.uuid4()}").status_code == 404
        assert api.get(f"/api/jobs/{uuid.uuid4()}").status_code == 404
        assert lookups == [api_key]  # once for both requests
        ApiKey.objects.update(revoked_at=timezone.now())
        assert api.get(f"/api/jobs/{uuid.uuid4()}").status_code == 404  # cached: still known
        time.sleep(0.6)
        assert api.get(f"/api/jobs/{uuid.uuid4()}").status_code == 401
