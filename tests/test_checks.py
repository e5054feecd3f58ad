"""One test per system check id: each configuration mistake is reported, with a hint."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core import checks
from django.test import override_settings

from modalkit_django.checks import CHECK_TAG, CHECKS, check_connection_pooler, check_modalkit

TWO_MODELS = "model_settings:\n  model_entries:\n    a: {}\n    b: {}\n"
# Where workers of their own send results: not a memory backend (E017).
RESULTS = {"BACKEND": "modalkit_django.queues.redis.RedisBackend", "OPTIONS": {"url": "redis://127.0.0.1:6379/0"}}
WORKERS_RESULTS = {"QUEUES": {**settings.MODALKIT["QUEUES"], "results": RESULTS}, "QUEUE_ROUTES": [("*", "results")]}


def ids_with(**modalkit: Any) -> list[str]:
    with override_settings(MODALKIT={**settings.MODALKIT, **modalkit}):
        messages = check_modalkit()
    for message in messages:
        assert message.hint, message
    return [message.id for message in messages if message.level >= checks.ERROR]


def test_the_demo_configuration_is_clean() -> None:
    assert check_modalkit() == []


def test_e001_invalid_setting() -> None:
    assert ids_with(WORKER={"BATCH_SIZE": -1}) == ["modalkit_django.E001"]


def test_e002_unreadable_yaml(tmp_path: Path) -> None:
    assert ids_with(CONFIG=tmp_path / "absent.yaml") == ["modalkit_django.E002"]


@pytest.mark.parametrize("path", ["", "project.nowhere.Pipeline", "project.sentiment.SentimentRequest"])
def test_e003_bad_pipeline(path: str) -> None:
    assert ids_with(PIPELINE=path) == ["modalkit_django.E003"]


def test_e004_default_model_not_configured(tmp_path: Path) -> None:
    assert ids_with(DEFAULT_MODEL="missing") == ["modalkit_django.E004"]
    two = tmp_path / "two.yaml"
    two.write_text(TWO_MODELS)
    assert ids_with(CONFIG=two, DEFAULT_MODEL=None) == ["modalkit_django.E004"]


def test_e005_backend_cannot_be_imported() -> None:
    queues = {**settings.MODALKIT["QUEUES"], "sqs": {"BACKEND": "nowhere.SQSBackend"}}
    assert ids_with(QUEUES=queues) == ["modalkit_django.E005"]
    assert ids_with(INFERENCE={"BACKEND": "nowhere.Backend"}) == ["modalkit_django.E005"]


def test_e006_queue_alias_used_but_not_defined() -> None:
    assert ids_with(QUEUE_ROUTES=[("ml_*", "kafka")]) == ["modalkit_django.E006"]


def test_e007_broker_url_of_no_broker() -> None:
    assert ids_with(BROKER={"URL": "kafka://localhost:9092"}) == ["modalkit_django.E007"]


@pytest.mark.parametrize(("url", "extra"), [("amqp://guest@localhost", "rabbitmq"), ("nats://localhost:4222", "nats")])
def test_e011_a_broker_whose_extra_is_not_installed(url: str, extra: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.util import find_spec

    from modalkit_django import checks
    from modalkit_django.broker import transport_for

    # As if installed without the extra: its modules cannot be found.
    hidden = transport_for(url).requires  # type: ignore[union-attr]
    monkeypatch.setattr(checks, "find_spec", lambda name, *a: None if name in hidden else find_spec(name, *a))
    # A memory queue beside a broker of its own is E017: route the results to Redis.
    redis = {"BACKEND": "modalkit_django.queues.redis.RedisBackend", "OPTIONS": {"url": settings.REDIS_URL}}
    queues = {**settings.MODALKIT["QUEUES"], "redis": redis}
    with override_settings(
        MODALKIT={**settings.MODALKIT, "BROKER": {"URL": url}, "QUEUES": queues, "QUEUE_ROUTES": [("*", "redis")]}
    ):
        messages = check_modalkit()
    assert [(message.id, message.hint) for message in messages] == [
        ("modalkit_django.E011", f'Install it: pip install "modalkit-django[{extra}]"')
    ]


@pytest.mark.django_db(databases=["default", "embedded"])  # the JSONField check asks SQLite
def test_checks_run_with_manage_py_check() -> None:
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    with (
        override_settings(MODALKIT={**settings.MODALKIT, "DEFAULT_MODEL": "missing"}),
        pytest.raises(SystemCheckError, match=r"modalkit_django\.E004"),
    ):
        call_command("check")


def test_e008_backend_refuses_its_options() -> None:
    queues = {**settings.MODALKIT["QUEUES"], "hooks": {"BACKEND": "modalkit_django.queues.webhook.WebhookBackend"}}
    assert ids_with(QUEUES=queues) == ["modalkit_django.E008"]  # no secret
    queues["hooks"]["OPTIONS"] = {"secret": "not-whsec"}
    assert ids_with(QUEUES=queues) == ["modalkit_django.E008"]
    modal_without_class = {"BACKEND": "modalkit_django.clients.modal.ModalBackend"}
    assert ids_with(INFERENCE=modal_without_class) == ["modalkit_django.E008"]


def test_e009_task_module_cannot_be_imported() -> None:
    assert ids_with(TASK_MODULES=["myapp.nowhere"]) == ["modalkit_django.E009"]


def test_e010_a_heartbeat_slower_than_half_the_lease() -> None:
    assert ids_with(WORKER={"LEASE_SECONDS": 10, "HEARTBEAT_SECONDS": 6}) == ["modalkit_django.E010"]
    assert ids_with(WORKER={"LEASE_SECONDS": 10, "HEARTBEAT_SECONDS": 5}) == []


def test_e017_a_memory_backend_results_can_reach_with_workers_of_their_own() -> None:
    redis = {"URL": "redis://127.0.0.1:6379/0", "QUEUE_NAME": "shop-jobs"}
    queues = WORKERS_RESULTS["QUEUES"]
    # The in-process broker: the memory backend is this process's, where the results are read.
    assert ids_with(QUEUES=queues) == []
    # modalkit.yaml's default alias is the memory backend: a worker's results would stay in it.
    assert ids_with(BROKER=redis, QUEUES=queues) == ["modalkit_django.E017"]
    assert ids_with(BROKER=redis, QUEUES=queues, QUEUE_ROUTES=[("acme-*", "results")]) == ["modalkit_django.E017"]
    assert ids_with(BROKER=redis, QUEUES=queues, QUEUE_ROUTES=[("audit", "memory"), ("*", "results")]) == [
        "modalkit_django.E017"
    ]
    # A catch-all route before it: no result can reach the memory backend.
    assert ids_with(BROKER=redis, QUEUES=queues, QUEUE_ROUTES=[("*", "results")]) == []


def test_e017_can_be_silenced_on_purpose() -> None:
    from django.core.management import call_command

    redis = {"URL": "redis://127.0.0.1:6379/0", "QUEUE_NAME": "shop-jobs"}
    with override_settings(MODALKIT={**settings.MODALKIT, "BROKER": redis}):
        call_command("check", "--tag", "modalkit")  # the tests' settings silence it
        with override_settings(SILENCED_SYSTEM_CHECKS=[]), pytest.raises(Exception, match=r"modalkit_django\.E017"):
            call_command("check", "--tag", "modalkit")


def test_w006_is_a_database_check_only() -> None:
    """What it finds, through a real PgBouncer: tests/test_pgbouncer.py. Here: only
    ``migrate`` and ``check --database`` run it; ``check --tag modalkit`` and ``/ready``
    (which runs this app's checks) would query every database."""
    [registered] = [check for check in checks.registry.registry.get_checks() if check is check_connection_pooler]
    assert registered.tags == (checks.Tags.database,)
    assert CHECK_TAG not in registered.tags
    assert check_connection_pooler(databases=None) == []


def test_w004_requeue_after_seconds_is_accepted_and_said_to_do_nothing() -> None:
    worker = {**settings.MODALKIT["WORKER"], "REQUEUE_AFTER_SECONDS": 120}
    with override_settings(MODALKIT={**settings.MODALKIT, "WORKER": worker}):
        messages = check_modalkit()
    assert [(message.id, message.level) for message in messages] == [("modalkit_django.W004", checks.WARNING)]
    assert "POLL_INTERVAL_SECONDS" in (messages[0].hint or "")


def test_w001_a_backend_named_by_a_path_that_moved_still_works() -> None:
    old = {"BACKEND": "modalkit_django.inference.local.LocalBackend"}
    with override_settings(MODALKIT={**settings.MODALKIT, "INFERENCE": old}):
        messages = check_modalkit()
        from modalkit_django.clients import get_inference_backend
        from modalkit_django.clients.local import LocalBackend

        assert isinstance(get_inference_backend(), LocalBackend)
    assert [(message.id, message.level) for message in messages] == [("modalkit_django.W001", checks.WARNING)]
    assert "modalkit_django.clients.local.LocalBackend" in messages[0].msg


def test_old_import_paths_forward_with_a_warning() -> None:
    from modalkit_django.clients import InferenceBackend
    from modalkit_django.inference import backends

    with pytest.warns(DeprecationWarning, match=r"moved to modalkit_django\.clients\.InferenceBackend"):
        assert backends.InferenceBackend is InferenceBackend
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        backends.Nothing  # noqa: B018


def test_e011_a_backend_whose_extra_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    # As if installed without [sqs] and [modal]: importing either fails, as it would.
    for module in ("boto3", "modal"):
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.delitem(sys.modules, "modalkit_django.queues.sqs", raising=False)
    queues = {**settings.MODALKIT["QUEUES"], "sqs": {"BACKEND": "modalkit_django.queues.sqs.SQSBackend"}}
    modal = {"BACKEND": "modalkit_django.clients.modal.ModalBackend", "OPTIONS": {"class_name": "C"}}
    with override_settings(MODALKIT={**settings.MODALKIT, "QUEUES": queues, "INFERENCE": modal}):
        messages = check_modalkit()
    assert [message.id for message in messages] == ["modalkit_django.E011", "modalkit_django.E011"]
    assert [message.hint for message in messages] == [
        'Install it: pip install "modalkit-django[sqs]"',
        'Install it: pip install "modalkit-django[modal]"',
    ]


def test_w002_a_stream_other_deployments_would_share(tmp_path: Path) -> None:
    default_prefix = tmp_path / "modalkit.yaml"
    default_prefix.write_text("model_settings:\n  model_entries:\n    sentiment: {}\n")
    redis = {"URL": "redis://127.0.0.1:6379/0"}
    workers = {**settings.MODALKIT, "CONFIG": default_prefix, **WORKERS_RESULTS}
    with override_settings(MODALKIT={**workers, "BROKER": redis}):
        assert [message.id for message in check_modalkit()] == ["modalkit_django.W002"]
    named = {**redis, "QUEUE_NAME": "shop-jobs"}
    with override_settings(MODALKIT={**workers, "BROKER": named}):
        assert check_modalkit() == []


# Each mistake, as `manage.py check` reports it: an E-code and exit status 1, never a traceback.
MISTAKES = {
    "missing modalkit.yaml": ({"CONFIG": "/nowhere/modalkit.yaml"}, "modalkit_django.E002"),
    "invalid modalkit.yaml": ({"CONFIG": "{bad}"}, "modalkit_django.E002"),
    "a PIPELINE that does not exist": ({"PIPELINE": "shop.nowhere.Pipeline"}, "modalkit_django.E003"),
    "a backend path that does not exist": (
        {"QUEUES": {"memory": {"BACKEND": "shop.queues.Nope"}}},
        "modalkit_django.E005",
    ),
    "an invalid MODALKIT": ({"WORKER": {"BATCH_SIZE": 0}}, "modalkit_django.E001"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_manage_py_check_reports_each_mistake_with_its_code(mistake: str, tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from .conftest import ROOT

    changes, code = MISTAKES[mistake]
    if changes.get("CONFIG") == "{bad}":
        bad = tmp_path / "modalkit.yaml"
        bad.write_text("app_settings: [not, a, mapping\n")
        changes = {"CONFIG": str(bad)}
    settings_module = tmp_path / "mistaken_settings.py"
    settings_module.write_text(
        "import json\nfrom project.settings import *  # noqa\nfrom project.settings import MODALKIT\n"
        f"MODALKIT = {{**MODALKIT, **json.loads({json.dumps(json.dumps(changes))})}}\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mistaken_settings", "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert code in result.stderr
    assert "Traceback" not in result.stderr


DEMO_YAML = Path(__file__).resolve().parent.parent / "modalkit.yaml"


def ids_for_yaml(tmp_path: Path, old: str, new: str) -> list[str]:
    """The error ids for the demo ``modalkit.yaml`` with ``old`` replaced by ``new``."""
    text = DEMO_YAML.read_text()
    assert old in text
    path = tmp_path / "modalkit.yaml"
    path.write_text(text.replace(old, new, 1))
    return ids_with(CONFIG=path)


DEPLOYMENT = "  deployment_config:\n"


def test_e012_secure_is_refused(tmp_path: Path) -> None:
    assert ids_for_yaml(tmp_path, DEPLOYMENT, DEPLOYMENT + "    secure: false\n") == []
    assert ids_for_yaml(tmp_path, DEPLOYMENT, DEPLOYMENT + "    secure: true\n") == ["modalkit_django.E012"]


def test_e013_handler_concurrency_is_refused(tmp_path: Path) -> None:
    assert ids_for_yaml(tmp_path, DEPLOYMENT, DEPLOYMENT + "    allow_concurrent_inputs_handler: 10\n") == []
    new = DEPLOYMENT + "    allow_concurrent_inputs_handler: 50\n"
    assert ids_for_yaml(tmp_path, DEPLOYMENT, new) == ["modalkit_django.E013"]


def test_e014_queue_broker_url_is_refused(tmp_path: Path) -> None:
    old = '    backend: "memory"'
    assert ids_for_yaml(tmp_path, old, old + '\n    broker_url: "memory://"') == []
    new = old + '\n    broker_url: "redis://127.0.0.1:6379"'
    assert ids_for_yaml(tmp_path, old, new) == ["modalkit_django.E014"]


def test_e015_ssm_key_is_refused(tmp_path: Path) -> None:
    old = "  app_prefix:"
    new = '  auth_config: {ssm_key: "/svc/api-key", auth_header: "x-api-key"}\n' + old
    assert ids_for_yaml(tmp_path, old, new) == ["modalkit_django.E015"]


@pytest.mark.parametrize(("interval", "ids"), [("-1", ["modalkit_django.E016"]), ("0", []), ("60", [])])
def test_e016_negative_reload_interval_is_refused(tmp_path: Path, interval: str, ids: list[str]) -> None:
    old = "volume_reload_interval_seconds: null"
    assert ids_for_yaml(tmp_path, old, f"volume_reload_interval_seconds: {interval}") == ids


def test_w003_unknown_nested_keys_are_named(tmp_path: Path) -> None:
    text = DEMO_YAML.read_text().replace(DEPLOYMENT, DEPLOYMENT + "    concurency_limit: 3\n", 1)
    path = tmp_path / "modalkit.yaml"
    path.write_text(text.replace("    wait_ms: 10", "    wait_ms: 10\n    wait: 1", 1))
    with override_settings(MODALKIT={**settings.MODALKIT, "CONFIG": path}):
        [warning] = check_modalkit()
    assert warning.id == "modalkit_django.W003"
    assert "app_settings.deployment_config.concurency_limit" in warning.msg
    assert "app_settings.batch_config.wait" in warning.msg


def test_unknown_top_level_keys_are_an_error_as_in_modalkit(tmp_path: Path) -> None:
    path = tmp_path / "modalkit.yaml"
    path.write_text(DEMO_YAML.read_text() + "app_setting: {}\n")
    assert ids_with(CONFIG=path) == ["modalkit_django.E002"]


@pytest.mark.django_db(databases=["default", "embedded"])  # the JSONField check asks SQLite
def test_refused_modalkit_keys_fail_manage_py_check(tmp_path: Path) -> None:
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    path = tmp_path / "modalkit.yaml"
    path.write_text(DEMO_YAML.read_text().replace(DEPLOYMENT, DEPLOYMENT + "    secure: true\n", 1))
    with (
        override_settings(MODALKIT={**settings.MODALKIT, "CONFIG": path}),
        pytest.raises(SystemCheckError, match=r"modalkit_django\.E012"),
    ):
        call_command("check")


def test_w005_the_router_on_a_hosts_ninja_api_under_atomic_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from django.db import connections
    from django.urls import include, path
    from ninja import NinjaAPI

    from modalkit_django.api import add_error_handlers, build_router
    from modalkit_django.api.errors import ANSWERED
    from modalkit_django.checks import check_request_transactions

    host = add_error_handlers(NinjaAPI(urls_namespace="host-w005"))
    host.add_router("/", build_router())
    urlconf = types.ModuleType("w005_urls")
    urlconf.urlpatterns = [path("api/", host.urls)]  # type: ignore[attr-defined]
    assert check_request_transactions() == []  # autocommit: nothing to say
    monkeypatch.setitem(connections.settings["default"], "ATOMIC_REQUESTS", True)
    with override_settings(ROOT_URLCONF=urlconf):
        [warning] = check_request_transactions()
    assert (warning.id, warning.level) == ("modalkit_django.W005", checks.WARNING)
    assert "'host-w005'" in warning.msg and "include('modalkit_django.urls')" in warning.hint
    urlconf.urlpatterns = [path("", include("modalkit_django.urls"))]  # type: ignore[attr-defined]
    with override_settings(ROOT_URLCONF=urlconf):
        assert host in ANSWERED
        assert check_request_transactions() == []  # what is mounted is the app's own API


CHECK_ID = re.compile(r"modalkit_django\.[EW]\d{3}")
PACKAGE = Path(__file__).resolve().parent.parent / "modalkit_django"


def ids_in_code() -> set[str]:
    """Every check id the package's code names as a string of its own, outside the registry.

    A check id only reaches Django as such a literal (``_report("modalkit_django.E004", …)``,
    ``id="modalkit_django.E011"``); docstrings and comments that mention one do not count.
    """
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        registry_keys: set[int] = set()
        for node in ast.walk(tree):
            is_registry = isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "CHECKS" for target in node.targets
            )
            if is_registry and isinstance(node.value, ast.Dict):
                registry_keys |= {id(key) for key in node.value.keys}
        found |= {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and CHECK_ID.fullmatch(node.value)
            and id(node) not in registry_keys
        }
    return found


def test_the_registry_lists_every_id_the_code_reports_and_no_other() -> None:
    emitted = ids_in_code()
    assert emitted - set(CHECKS) == set(), "reported but not in checks.CHECKS"
    assert set(CHECKS) - emitted == set(), "in checks.CHECKS but never reported"
    for check_id, check in CHECKS.items():
        expected = checks.ERROR if check_id.split(".")[1].startswith("E") else checks.WARNING
        assert check.level == expected, check_id
        assert check.summary and check.hint, check_id


def test_each_registered_id_has_a_test_of_its_own() -> None:
    names = {name for name in vars(sys.modules[__name__]) if name.startswith("test_")}
    for check_id in CHECKS:
        code = check_id.rpartition(".")[2].lower()
        assert any(name.startswith(f"test_{code}_") for name in names), f"no test_{code}_… for {check_id}"
