"""Fidelity with ModalKit 0.2.0: its consumers read our messages, its modalkit.yaml deploys the same.

ModalKit itself is the oracle (``modalkit==0.2.0`` in requirements-dev.txt): its pydantic
models parse our messages, its own serialisation makes the messages we compare with, and
its ``Settings`` and ``ModalConfig`` load and deploy its sample ``modalkit.yaml``.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modal
import pytest
from modalkit.iomodel import AsyncInputModel, DelayedFailureOutputModel, InferenceOutputModel
from modalkit.settings import Settings as ModalkitSettings
from pydantic import BaseModel, ConfigDict, ValidationError

from modalkit_django.exceptions import PipelineError
from modalkit_django.inference import deploy
from modalkit_django.inference.config import ConfigError, load_config
from modalkit_django.jobs.messages import queue_payload
from modalkit_django.models import Job
from project import modal_app

from . import flow
from .flow import OUTPUT, claim_one, with_modalkit
from .modal_fake.deployment import resolve_user_cls

# ModalKit's sample, verbatim: github.com/prassanna-ravishankar/modalkit, modalkit.yaml
# at 60a02de7db9e53cb6e1849c482607721cc6f784a.
MODALKIT_SAMPLE = """\
app_settings:
  app_prefix: "my-ml-service"
  auth_config:
    # Option 1: Use AWS SSM for API key (recommended)
    ssm_key: "/my-service/api-key"
    # Option 2: Use hardcoded API key (comment out ssm_key above)
    # api_key: "your-secret-api-key-here"
    auth_header: "x-api-key"
  build_config:
    image: "python:3.11-slim"
    tag: "latest"
    env:
      MODEL_VERSION: "1.0"
      LOG_LEVEL: "INFO"
  deployment_config:
    gpu: "T4"  # Options: T4, A10G, A100, H100, or null for CPU
    concurrency_limit: 10
    container_idle_timeout: 300
    secure: false  # Set to true for Modal proxy auth
    volumes: {}
    # Example cloud storage mount:
    # cloud_bucket_mounts:
    #   - mount_point: "/mnt/models"
    #     bucket_name: "my-model-bucket"
    #     secret: "aws-credentials"
    #     read_only: true
  batch_config:
    max_batch_size: 32
    wait_ms: 100

model_settings:
  local_model_repository_folder: "./models"
  common:
    device: "cuda"
    cache_dir: "./cache"
  model_entries:
    my_model:
      model_path: "models/my_model.pt"
      batch_size: 16
"""

REQUEST = {"message": {"text": "good"}, "success_queue": "ok", "failure_queue": "err", "meta": {"request_id": "r1"}}


# --- A consumer's side: ModalKit's models, and strict copies for consumers that forbid extras ----


class SentimentRequest(BaseModel):
    text: str


class SentimentOutput(InferenceOutputModel):
    """The consumer's output model, as ModalKit's guide writes it."""

    sentiment: str
    confidence: float


class StrictOutput(SentimentOutput):
    # ModalKit adds ``meta`` to the output before it sends it.
    model_config = ConfigDict(extra="forbid")
    meta: dict[str, Any]


class StrictFailure(DelayedFailureOutputModel):
    model_config = ConfigDict(extra="forbid")
    original_message: AsyncInputModel[SentimentRequest]


def modalkit_sends(output: InferenceOutputModel, request: AsyncInputModel[Any]) -> dict[str, Any]:
    """What ModalKit 0.2.0's ``ModalService.send_async_response`` puts on a queue, as JSON."""
    if not isinstance(output, DelayedFailureOutputModel):
        output.meta = request.meta
    if output.status == "success":
        return json.loads(output.model_dump_json(exclude={"error"}))  # type: ignore[no-any-return]
    return json.loads(output.model_dump_json())  # type: ignore[no-any-return]


def modalkit_request() -> AsyncInputModel[SentimentRequest]:
    return AsyncInputModel[SentimentRequest].model_validate(REQUEST)


def finished(prediction: Any) -> dict[str, Any]:
    """The payload of the one delivery of a job that finished with ``prediction``."""
    job = claim_one(flow.submit(**{key: value for key, value in REQUEST.items() if key != "message"}))
    [delivery] = flow.finish([(job, prediction)])
    return json.loads(json.dumps(delivery.payload))  # type: ignore[no-any-return]


def output_failure() -> dict[str, Any]:
    """The payload for an output whose status is not "success", kept by the inference client."""
    output = {"status": "failed", "error": "text too long", "sentiment": "unknown", "confidence": 0.0}
    job = Job(
        model_name="sentiment",
        status=Job.Status.FAILED,
        message=REQUEST["message"],
        meta=REQUEST["meta"],
        success_queue="ok",
        failure_queue="err",
        error={"type": "InferenceError", "message": "text too long", "output": output},
    )
    return queue_payload(job, dt.datetime.now(dt.UTC))


# --- Messages --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_success_strict_is_exactly_modalkits_message() -> None:
    with with_modalkit(MESSAGE_FORMAT="modalkit"):
        payload = finished(OUTPUT)
    assert payload == modalkit_sends(SentimentOutput(**OUTPUT), modalkit_request())
    StrictOutput.model_validate(payload)


@pytest.mark.django_db
def test_success_extended_carries_every_modalkit_field_and_ours_beside() -> None:
    payload = finished(OUTPUT)
    expected = modalkit_sends(SentimentOutput(**OUTPUT), modalkit_request())
    assert {key: payload[key] for key in expected} == expected
    assert set(payload) - set(expected) == {"job_id", "model_name", "timestamp", "submitted_by"}
    SentimentOutput.model_validate(payload)
    with pytest.raises(ValidationError, match="job_id"):
        StrictOutput.model_validate(payload)


@pytest.mark.django_db
def test_failure_strict_is_exactly_modalkits_delayed_failure() -> None:
    with with_modalkit(MESSAGE_FORMAT="modalkit"):
        payload = finished(PipelineError("boom", error_type="ValueError"))
    error = "Internal Server Error. Error log: boom"
    failure = DelayedFailureOutputModel(status="error", error=error, original_message=modalkit_request())
    assert payload == modalkit_sends(failure, modalkit_request())
    assert "meta" not in payload  # ModalKit has the request's meta in original_message only
    StrictFailure.model_validate(payload)


@pytest.mark.django_db
def test_failure_extended_parses_as_modalkits_delayed_failure() -> None:
    payload = finished(PipelineError("boom", error_type="ValueError"))
    parsed = DelayedFailureOutputModel.model_validate(payload)
    assert (parsed.status, parsed.error) == ("error", "boom")
    assert AsyncInputModel[SentimentRequest].model_validate(payload["original_message"]) == modalkit_request()
    assert payload["meta"] == REQUEST["meta"]
    assert set(payload) - {"status", "error", "original_message"} == {
        "error_type",
        "meta",
        "job_id",
        "model_name",
        "timestamp",
        "submitted_by",
    }
    with pytest.raises(ValidationError):
        StrictFailure.model_validate(payload)


@pytest.mark.django_db
def test_an_output_that_is_not_success_keeps_its_fields_in_both_formats() -> None:
    output = SentimentOutput(status="failed", error="text too long", sentiment="unknown", confidence=0.0)
    expected = modalkit_sends(output, modalkit_request())
    with with_modalkit(MESSAGE_FORMAT="modalkit"):
        assert output_failure() == expected
    StrictOutput.model_validate(expected)
    payload = output_failure()
    assert {key: payload[key] for key in expected} == expected
    assert "original_message" not in payload
    assert payload["error_type"] == "InferenceError"


def test_the_message_format_setting_is_validated() -> None:
    from modalkit_django.conf import ModalkitSettings

    assert ModalkitSettings().message_format == "extended"
    with pytest.raises(ValidationError):
        ModalkitSettings.model_validate({"MESSAGE_FORMAT": "json"})


# --- modalkit.yaml ---------------------------------------------------------------------------


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "modalkit.yaml"
    path.write_text(MODALKIT_SAMPLE)
    return path


def modalkits_settings(path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("MODALKIT_CONFIG", str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic-settings: "/etc/secrets does not exist"
        return ModalkitSettings()


@pytest.fixture
def modalkit_config() -> type[Any]:
    """ModalKit's ``ModalConfig`` (its import configures a JSON logger and warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from modalkit.modalutils import ModalConfig
    return ModalConfig


def test_the_sample_loads_to_modalkits_values(sample: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = modalkits_settings(sample, monkeypatch).model_dump(mode="json")
    monkeypatch.delenv("MODALKIT_CONFIG")
    ours = load_config([sample]).model_dump(mode="json")
    # ModalKit's defaults that differ here, each on purpose (see docs/how-to/from-modalkit.md).
    assert theirs["app_settings"]["deployment_config"].pop("volume_reload_interval_seconds") == -1
    assert ours["app_settings"]["deployment_config"].pop("volume_reload_interval_seconds") == 0
    assert theirs["app_settings"]["queue_config"].pop("backend") == "sqs"
    assert ours["app_settings"]["queue_config"].pop("backend") == "memory"

    def common(mine: Any, reference: Any) -> Any:
        if isinstance(reference, dict) and isinstance(mine, dict):
            return {key: common(mine[key], value) for key, value in reference.items()}
        return mine

    assert common(ours, theirs) == theirs


class ImageSpy:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        for name in ("from_registry", "debian_slim"):
            original = getattr(modal.Image, name)
            monkeypatch.setattr(modal.Image, name, self._spy(name, original))

    def _spy(self, name: str, original: Any) -> Any:
        def spy(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args))
            return original(*args, **kwargs)

        return staticmethod(spy)

    def take(self) -> list[tuple[str, tuple[Any, ...]]]:
        calls, self.calls = self.calls, []
        return calls


@pytest.mark.parametrize(
    ("image", "tag", "expected"),
    [
        ("python:3.11-slim", "latest", ("debian_slim", ())),
        ("python", "3.12-slim", ("debian_slim", ())),
        ("nvcr.io/nvidia/pytorch", "24.01-py3", ("from_registry", ("nvcr.io/nvidia/pytorch:24.01-py3",))),
        ("docker.io/library/python", "3.11-slim", ("from_registry", ("docker.io/library/python:3.11-slim",))),
    ],
)
def test_the_base_image_follows_modalkits_rule(
    sample: Path,
    monkeypatch: pytest.MonkeyPatch,
    modalkit_config: Any,
    image: str,
    tag: str,
    expected: tuple[str, tuple[Any, ...]],
) -> None:
    sample.write_text(MODALKIT_SAMPLE.replace('"python:3.11-slim"', f'"{image}"').replace('"latest"', f'"{tag}"'))
    spy = ImageSpy(monkeypatch)
    modalkit_config(modalkits_settings(sample, monkeypatch)).get_image()
    assert spy.take() == [expected]
    monkeypatch.delenv("MODALKIT_CONFIG")
    deploy.build_image(load_config([sample]), config_files=[sample])
    assert spy.take() == [expected]


def test_the_sample_deploys_with_modalkits_options(
    sample: Path, monkeypatch: pytest.MonkeyPatch, modalkit_config: Any
) -> None:
    theirs = modalkit_config(modalkits_settings(sample, monkeypatch)).get_app_cls_settings()
    monkeypatch.delenv("MODALKIT_CONFIG")
    ours = deploy.cls_options(load_config([sample]))
    # Modal 1.x names for ModalKit's pre-1.0 ones.
    assert ours["max_containers"] == theirs["concurrency_limit"] == 10
    assert ours["scaledown_window"] == theirs["container_idle_timeout"] == 300
    for key in ("gpu", "retries", "secrets", "volumes"):
        assert ours[key] == theirs[key], key
    assert theirs["allow_concurrent_inputs"] == 1
    assert isinstance(deploy.concurrent(load_config([sample]))(object), type)  # 1: no @modal.concurrent


def test_unknown_keys_are_treated_as_modalkit_treats_them(sample: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nested = MODALKIT_SAMPLE.replace("    wait_ms: 100", "    wait_ms: 100\n    wait_msec: 5")
    sample.write_text(nested)
    assert "wait_msec" not in modalkits_settings(sample, monkeypatch).app_settings.batch_config.model_dump()
    monkeypatch.delenv("MODALKIT_CONFIG")
    assert load_config([sample]).app_settings.batch_config.wait_ms == 100  # loads; W003 names it
    sample.write_text(MODALKIT_SAMPLE + "app_setting: {}\n")
    with pytest.raises(ValidationError, match="app_setting"):
        modalkits_settings(sample, monkeypatch)
    monkeypatch.delenv("MODALKIT_CONFIG")
    with pytest.raises(ConfigError, match="app_setting"):
        load_config([sample])


def test_the_sample_passes_the_checks_but_for_its_ssm_key(sample: Path) -> None:
    from django.conf import settings
    from django.test import override_settings

    from modalkit_django.checks import check_modalkit

    with override_settings(MODALKIT={**settings.MODALKIT, "CONFIG": sample, "DEFAULT_MODEL": "my_model"}):
        assert [message.id for message in check_modalkit()] == ["modalkit_django.E015"]


@pytest.fixture
def service() -> Iterator[Any]:
    user_cls = resolve_user_cls(modal_app.SentimentService)
    instance = user_cls.__new__(user_cls)
    instance.model_name = "sentiment"
    yield instance
    type(instance).config = modal_app.config


@pytest.mark.parametrize(("interval", "reloads"), [("", 2), ("\n    volume_reload_interval_seconds: null", 0)])
def test_by_default_volumes_reload_before_every_batch_as_in_modalkit(
    service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: str, reloads: int
) -> None:
    path = tmp_path / "modalkit.yaml"
    path.write_text(
        "app_settings:\n  deployment_config:\n    volumes: {/models: weights}"
        + interval
        + "\nmodel_settings:\n  model_entries: {sentiment: {}}\n"
    )
    type(service).config = load_config([path])
    service.load()
    reloaded: list[str] = []
    monkeypatch.setattr(
        modal.Volume,
        "from_name",
        staticmethod(lambda name: type("V", (), {"reload": lambda _: reloaded.append(name)})()),
    )
    service.run_batch([{"text": "good"}])
    service.run_batch([{"text": "good"}])
    assert reloaded == ["weights"] * reloads


def test_the_output_model_keeps_modalkits_fields() -> None:
    from modalkit_django.inference.pipeline import InferenceOutputModel as Ours

    assert set(Ours.model_fields) == set(InferenceOutputModel.model_fields) == {"status", "error"}
    assert Ours.model_config.get("extra") == InferenceOutputModel.model_config.get("extra") == "allow"
    assert Ours.model_fields["error"].default is InferenceOutputModel.model_fields["error"].default is None
    # The one difference (documented): status defaults to "success" here, ModalKit requires it.
    assert InferenceOutputModel.model_fields["status"].is_required()
    assert Ours().status == "success"
    output = {"status": "failed", "error": "why", "label": "x"}
    assert Ours.model_validate(output).model_dump() == InferenceOutputModel.model_validate(output).model_dump()


@pytest.mark.django_db
def test_an_output_that_is_not_success_reaches_the_failure_queue_whole_from_the_pipeline() -> None:
    from modalkit_django.clients.base import prediction_from_outcome
    from modalkit_django.inference.batch import run_batch

    from .pipelines import RefusingPipeline

    pipeline = RefusingPipeline("echo", "/tmp", {})
    refused, scored = run_batch(pipeline, [{"text": "refuse this"}, {"text": "fine"}])
    assert scored == {"ok": True, "output": {"status": "success", "text": "fine", "length": 4}}
    prediction = prediction_from_outcome(refused)
    assert isinstance(prediction, PipelineError)

    job = claim_one(flow.submit(success_queue="ok", failure_queue="err", meta={"r": 1}))
    [delivery] = flow.finish([(job, prediction)])

    assert delivery.route == "failure"
    output = {"status": "refused", "error": "not scored", "text": "refuse this", "length": 0}
    assert {key: delivery.payload[key] for key in (*output, "meta")} == {**output, "meta": {"r": 1}}
    assert "original_message" not in delivery.payload  # as ModalKit: the output, not the request
