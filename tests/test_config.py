"""modalkit.yaml: ModalKit's schema, several files, environment overrides, lazy caching."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from modalkit_django import conf
from modalkit_django.exceptions import ModalkitImproperlyConfigured, UnknownModel
from modalkit_django.inference.config import ConfigError, config_paths, load_config

ROOT = Path(__file__).resolve().parent.parent

MODALKIT_STYLE = """
app_settings:
  app_prefix: "sentiment"
  build_config: {image: "python", tag: "3.12", env: {A: "1"}}
  deployment_config: {gpu: "T4", mounts: [{local_path: "a", remote_path: "/b"}], some_future_key: 1}
  batch_config: {max_batch_size: 8, wait_ms: 5}
  queue_config: {backend: "sqs", broker_url: "redis://x"}
model_settings:
  local_model_repository_folder: "/models"
  common: {device: "cuda"}
  model_entries:
    small: {size: 1}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_loads_a_modalkit_file_unchanged(tmp_path: Path) -> None:
    config = load_config([write(tmp_path, "modalkit.yaml", MODALKIT_STYLE)])
    assert config.app_settings.deployment_config.gpu == "T4"
    assert config.app_settings.deployment_config.mounts[0].remote_path == "/b"
    assert config.app_settings.batch_config.max_batch_size == 8
    assert config.app_settings.queue_config.backend == "sqs"
    assert config.model_settings.common == {"device": "cuda"}
    assert config.model_entry("small") == {"size": 1}
    assert str(config.model_settings.local_model_repository_folder) == "/models"


def test_app_name_is_prefix_plus_postfix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config([write(tmp_path, "modalkit.yaml", MODALKIT_STYLE)])
    monkeypatch.delenv("MODALKIT_APP_POSTFIX", raising=False)
    assert config.app_name == "sentiment-dev"
    monkeypatch.setenv("MODALKIT_APP_POSTFIX", "-prod")
    assert config.app_name == "sentiment-prod"


def test_nested_environment_override_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__GPU", "A100")
    monkeypatch.setenv("MODALKIT_APP_SETTINGS__BATCH_CONFIG__MAX_BATCH_SIZE", "64")
    config = load_config([write(tmp_path, "modalkit.yaml", MODALKIT_STYLE)])
    assert config.app_settings.deployment_config.gpu == "A100"
    assert config.app_settings.batch_config.max_batch_size == 64
    # Keys the variable does not name keep the file's values.
    assert config.app_settings.batch_config.wait_ms == 5


def test_later_files_win_key_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = write(tmp_path, "base.yaml", MODALKIT_STYLE)
    prod = write(tmp_path, "prod.yaml", "app_settings:\n  deployment_config: {gpu: H100}\n")
    monkeypatch.setenv("MODALKIT_CONFIG", f"{base},{prod}")
    config = load_config(config_paths("ignored.yaml"))
    assert config.app_settings.deployment_config.gpu == "H100"
    assert config.app_settings.deployment_config.mounts[0].local_path == "a"
    assert config.app_settings.app_prefix == "sentiment"


def test_config_paths_defaults_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODALKIT_CONFIG", raising=False)
    assert config_paths("a.yaml") == [Path("a.yaml")]
    assert config_paths(["a.yaml", Path("b.yaml")]) == [Path("a.yaml"), Path("b.yaml")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("app_settings: [unclosed", "not valid YAML"),
        ("- a list", "must hold a mapping"),
        ("app_settings:\n  batch_config: {max_batch_size: 0}\n", "app_settings.batch_config.max_batch_size"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config([write(tmp_path, "bad.yaml", text)])


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config([tmp_path / "absent.yaml"])


def test_django_side_reads_lazily_and_follows_override_settings(tmp_path: Path) -> None:
    assert conf.get_config().app_settings.app_prefix == "modalkit-sentiment"
    path = write(tmp_path, "other.yaml", MODALKIT_STYLE)
    with override_settings(MODALKIT={**settings.MODALKIT, "CONFIG": path, "DEFAULT_MODEL": None}):
        assert conf.get_config().app_settings.app_prefix == "sentiment"
        assert conf.resolve_model(None) == "small"
    assert conf.get_config().app_settings.app_prefix == "modalkit-sentiment"


def test_resolve_model_rejects_unknown_names() -> None:
    assert conf.resolve_model("sentiment") == "sentiment"
    with pytest.raises(UnknownModel, match="available: sentiment"):
        conf.resolve_model("nope")


def test_a_default_model_that_is_not_configured_is_the_operators_mistake() -> None:
    # Not UnknownModel (a 404 naming a model the client never sent): check E004's mistake.
    with (
        override_settings(MODALKIT={**settings.MODALKIT, "DEFAULT_MODEL": "sentimnet"}),
        pytest.raises(ModalkitImproperlyConfigured, match=r"MODALKIT\['DEFAULT_MODEL'\] 'sentimnet' is not in"),
    ):
        conf.resolve_model(None)


def test_invalid_modalkit_setting_is_improperly_configured() -> None:
    with (
        override_settings(MODALKIT={"WORKER": {"BATCH_SIZE": 0}}),
        pytest.raises(
            ModalkitImproperlyConfigured, match=r"WORKER\.BATCH_SIZE: Input should be greater than or equal to 1"
        ),
    ):
        conf.get_settings()
