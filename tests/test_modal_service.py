"""The Modal side: the service class and the modalkit.yaml → Modal options helpers.

These run without Modal: the service's methods are called on the raw class, as a
container would after ``@modal.enter``, and the options are inspected, not deployed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import modal
import pytest

from modalkit_django.inference import deploy
from modalkit_django.inference.config import load_config
from modalkit_django.inference.service import ModalService
from project import modal_app

from .modal_fake.deployment import resolve_user_cls

ROOT = Path(__file__).resolve().parent.parent

DEPLOYMENT = """
app_settings:
  app_prefix: "svc"
  build_config: {image: "python", tag: "3.12-slim", env: {HF_HOME: /cache}, extra_run_commands: "echo hi"}
  deployment_config:
    gpu: "A10G"
    region: "us-east"
    secrets: ["hf-token"]
    volumes: {"/models": "weights"}
    cloud_bucket_mounts: [{mount_point: "/bucket", bucket_name: "data", read_only: true}]
    concurrency_limit: 4
    container_idle_timeout: 60
    retries: 2
    timeout: 120
    allow_concurrent_inputs: 3
    volume_reload_interval_seconds: -1
  batch_config: {max_batch_size: 16, wait_ms: 25}
model_settings:
  common: {fail_word: "explode"}
  model_entries: {sentiment: {}}
"""


def load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "modalkit.yaml"
    path.write_text(text)
    return load_config([path])


@pytest.fixture
def config(tmp_path: Path) -> Any:
    return load(tmp_path, DEPLOYMENT)


def test_cls_options_translate_modalkit_names_to_modal_1x(config: Any) -> None:
    options = deploy.cls_options(config)
    assert options["gpu"] == "A10G"
    assert options["region"] == "us-east"
    assert options["max_containers"] == 4
    assert options["scaledown_window"] == 60
    assert options["retries"] == 2
    assert options["timeout"] == 120
    assert [type(secret) for secret in options["secrets"]] == [modal.Secret]
    assert isinstance(options["volumes"]["/models"], modal.Volume)
    assert isinstance(options["volumes"]["/bucket"], modal.CloudBucketMount)
    assert "image" not in options  # unset values are left to Modal


def test_build_image_and_the_decorators_accept_the_configuration(config: Any) -> None:
    image = deploy.build_image(config, config_files=[ROOT / "modalkit.yaml"])
    assert isinstance(image, modal.Image)
    app = modal.App("options-check")
    # Declaring the class validates every option, offline.
    app.cls(**deploy.cls_options(config, image=image))(deploy.concurrent(config)(type("Svc", (), {})))


def test_concurrent_is_a_no_op_for_one_input() -> None:
    config = load_config([ROOT / "modalkit.yaml"])
    marker = type("Svc", (), {})
    assert deploy.concurrent(config)(marker) is marker


def test_the_example_app_is_named_from_the_config() -> None:
    assert modal_app.app.name == "modalkit-sentiment-dev"
    assert modal_app.config.app_settings.batch_config.max_batch_size == 32


@pytest.fixture
def service(config: Any) -> Any:
    user_cls = resolve_user_cls(modal_app.SentimentService)
    instance = user_cls.__new__(user_cls)
    instance.model_name = "sentiment"
    type(instance).config = config  # this test's deployment_config
    instance.load()
    yield instance
    type(instance).config = modal_app.config


def test_run_batch_returns_one_outcome_per_input(service: Any) -> None:
    outcomes = service.run_batch([{"text": "good"}, {"text": "explode"}, {"text": ""}])
    assert [outcome["ok"] for outcome in outcomes] == [True, False, False]
    assert outcomes[0]["output"]["sentiment"] == "positive"


def test_a_cuda_error_stops_the_container_taking_inputs(service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stopped: list[bool] = []
    monkeypatch.setattr(modal.experimental, "stop_fetching_inputs", lambda: stopped.append(True))

    def broken(input_list: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(service.pipeline, "run_inference", broken)
    [outcome] = service.run_batch([{"text": "good"}])
    assert outcome["error"]["type"] == "RuntimeError"
    assert stopped == [True]


def test_a_cuda_error_fails_the_whole_batch_once_without_running_its_inputs_again(
    service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ModalKit's own test expects: one stop, and every input of the batch failed. An
    ordinary error would rerun each input alone; on a GPU after a CUDA error, never."""
    stopped: list[bool] = []
    calls: list[int] = []
    monkeypatch.setattr(modal.experimental, "stop_fetching_inputs", lambda: stopped.append(True))

    def broken(input_list: Any) -> Any:
        calls.append(len(input_list))
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(service.pipeline, "run_inference", broken)
    outcomes = service.run_batch([{"text": "good"}, {"text": "fine"}, {"text": "great"}])
    assert calls == [3]  # the batch once, no input alone after it
    assert stopped == [True]
    assert [(outcome["ok"], outcome["error"]["type"]) for outcome in outcomes] == [(False, "RuntimeError")] * 3


def test_a_cuda_error_while_finding_a_bad_input_fails_the_rest_unrun(
    service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modal.experimental, "stop_fetching_inputs", lambda: None)
    calls: list[int] = []

    def flaky(input_list: Any) -> Any:
        calls.append(len(input_list))
        if len(calls) == 1:
            raise ValueError("one bad input somewhere")  # an ordinary error: one at a time
        if len(calls) == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return [{"sentiment": "positive", "confidence": 1.0}]

    monkeypatch.setattr(service.pipeline, "run_inference", flaky)
    outcomes = service.run_batch([{"text": "a"}, {"text": "b"}, {"text": "c"}, {"text": "d"}])
    assert calls == [4, 1, 1]  # the batch, the first alone, the second alone: then no more
    assert [outcome["ok"] for outcome in outcomes] == [True, False, False, False]


def test_other_errors_keep_the_container(service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stopped: list[bool] = []
    monkeypatch.setattr(modal.experimental, "stop_fetching_inputs", lambda: stopped.append(True))
    service.run_batch([{"text": "explode"}])
    assert stopped == []


def test_volumes_reload_on_schedule_then_the_hook_runs(
    service: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reloaded: list[str] = []

    class FakeVolume:
        def __init__(self, name: str) -> None:
            self.name = name

        def reload(self) -> None:
            reloaded.append(self.name)

    hooks: list[bool] = []
    monkeypatch.setattr(modal.Volume, "from_name", staticmethod(FakeVolume))
    monkeypatch.setattr(service.pipeline, "on_volume_reload", lambda: hooks.append(True))
    due_at_once = DEPLOYMENT.replace("volume_reload_interval_seconds: -1", "volume_reload_interval_seconds: 0")
    monkeypatch.setattr(type(service), "config", load(tmp_path, due_at_once))
    service.run_batch([{"text": "good"}])
    assert (reloaded, hooks) == (["weights"], [True])


@pytest.mark.parametrize("interval", ["-1", "null", "3600"])
def test_no_reload_when_disabled_or_not_due(
    service: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, interval: str
) -> None:
    text = DEPLOYMENT.replace("volume_reload_interval_seconds: -1", f"volume_reload_interval_seconds: {interval}")
    monkeypatch.setattr(type(service), "config", load(tmp_path, text))
    monkeypatch.setattr(modal.Volume, "from_name", staticmethod(lambda name: pytest.fail("reloaded")))
    service.run_batch([{"text": "good"}])


def test_subclasses_declare_model_name_where_modal_looks() -> None:
    class Another(ModalService):
        pass

    assert "model_name" in vars(Another)
    assert Another.__annotations__["model_name"] is str
