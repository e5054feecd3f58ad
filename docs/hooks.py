"""MkDocs hooks: the reference pages, generated from the code each time the site is built.

Registered in mkdocs.yml (``hooks:``). Each ``*_page()`` function returns one page's
Markdown and :func:`on_files` adds it to the site as a generated file, so no copy is
committed that could drift from the code: the settings from the pydantic models, the
checks from their registry, the command line from argparse, the HTTP API from the OpenAPI
schema the demo project serves, the messages from the payload builder itself, the Python
API from ``modalkit_django.__all__``. Django is set up with the demo project's settings;
nothing here connects to a database.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import enum
import inspect
import io
import json
import os
import re
import sys
import textwrap
import types
import typing
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
GENERATED_NOTE = "*Generated from the code when the documentation is built; do not edit.*"


def setup_django() -> None:
    """The demo project's settings, unless Django is set up already (as under pytest)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    from django.apps import apps

    if not apps.ready:
        import django

        django.setup()


# --- MkDocs ------------------------------------------------------------------------------


def pages() -> dict[str, Callable[[], str]]:
    """Each generated page by its path under docs/."""
    return {
        "reference/settings.md": settings_page,
        "reference/modalkit-yaml.md": modalkit_yaml_page,
        "reference/checks.md": checks_page,
        "reference/cli.md": cli_page,
        "reference/http-api.md": http_api_page,
        "reference/messages.md": messages_page,
        "reference/python-api.md": python_api_page,
        "changelog.md": changelog_page,
    }


def on_files(files: Any, *, config: Any) -> Any:
    from mkdocs.structure.files import File

    setup_django()
    for src_uri, page in pages().items():
        files.append(File.generated(config, src_uri, content=page()))
    return files


def on_serve(server: Any, *, config: Any, builder: Any) -> Any:
    # `mkdocs serve` rebuilds when the files read at each build change. The code is imported
    # once per process, so a change to it shows after a restart of `make docs-serve`.
    for path in ("README.md", "CHANGELOG.md"):
        server.watch(str(ROOT / path))
    return server


# --- Formatting helpers ------------------------------------------------------------------


def cell(text: str) -> str:
    """Text that fits in one Markdown table cell: one line, its pipes escaped outside code
    spans (inside them, Python-Markdown's tables leave pipes alone and would show a backslash)."""
    parts = " ".join(text.split()).split("`")
    return "`".join(part if index % 2 else part.replace("|", "\\|") for index, part in enumerate(parts))


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


def fenced(text: str, language: str = "text") -> str:
    return f"```{language}\n{text.rstrip()}\n```"


def python_value(value: Any) -> str:
    """A default as a user writes it in ``settings.py``."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return python_value(value.model_dump(by_alias=True))
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{python_value(key)}: {python_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(python_value(item) for item in value) + "]"
    return repr(value)


def type_name(annotation: Any) -> str:
    """``str | None``, ``dict[str, BackendSpec]``, ``"extended" | "modalkit"``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(arg) for arg in args)}]"
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "Any"
    return getattr(annotation, "__name__", str(annotation))


def bounds(field: Any) -> str:
    """A field's bounds from its pydantic metadata: ``≥ 1``, ``> 0``, ``≤ 100000``."""
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    found = []
    for constraint in field.metadata:
        for name, symbol in symbols.items():
            if getattr(constraint, name, None) is not None:
                found.append(f"{symbol} {getattr(constraint, name)}")
        if getattr(constraint, "min_length", None) is not None:
            found.append(f"at least {constraint.min_length} characters")
    return ", ".join(found)


def rst_to_markdown(text: str) -> str:
    """Docstrings use reStructuredText's ``literals`` and :func:`roles`; the site, Markdown."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([\w]+)`", r"`\1`", text)
    return text.replace("``", "`")


# --- Settings and modalkit.yaml ---------------------------------------------------------


def settings_page() -> str:
    from modalkit_django.conf import BackendSpec, ModalkitSettings

    def key(path: list[str]) -> str:
        return "MODALKIT" + "".join(f'["{name.upper()}"]' for name in path)

    sections = [
        "# Settings",
        GENERATED_NOTE,
        "Everything is configured in one Django setting, `MODALKIT`, a dict whose keys are "
        "written in upper case; nested sections are dicts too "
        '(`MODALKIT["WORKER"]["LEASE_SECONDS"]`). It is read when first used, never at import '
        "time, so `override_settings` works in tests. A mistake is reported by `manage.py check` as "
        "[E001](checks.md). The models are in `modalkit_django/conf.py`; `modalkit.yaml` is described "
        "in [modalkit.yaml](modalkit-yaml.md).",
        "## Top-level keys {#modalkit}",
        *model_sections(ModalkitSettings, [], key=key, title=key, value=python_value, anchor="modalkit"),
        "## Backends {#backends}",
        '`MODALKIT["INFERENCE"]` and each entry of `MODALKIT["QUEUES"]` name a backend class and '
        "its options, as Django's `CACHES` do:",
        *model_sections(BackendSpec, [], key=lambda path: path[-1].upper(), title=key, value=python_value),
    ]
    return "\n\n".join(sections) + "\n"


def modalkit_yaml_page() -> str:
    from modalkit_django.inference.config import ModalkitConfig

    sections = [
        "# modalkit.yaml",
        GENERATED_NOTE,
        "`modalkit.yaml` keeps ModalKit's schema: two sections, `app_settings` and `model_settings`. "
        "Every key can be overridden from the environment, as in ModalKit: "
        "`MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__GPU=A100` sets one nested key, "
        "`MODALKIT_CONFIG=base.yaml,prod.yaml` reads several files (later ones win), and "
        "`MODALKIT_APP_POSTFIX` (default `-dev`) is appended to `app_prefix` to name the Modal app. "
        "Unknown keys are an error at the top level (E002) and a warning inside a section (W003); "
        "see [the checks](checks.md) for the ModalKit keys that are refused. The models are in "
        "`modalkit_django/inference/config.py`.",
        *model_sections(ModalkitConfig, [], key=lambda path: path[-1], title=".".join, value=yaml_value, anchor="yaml"),
    ]
    return "\n\n".join(sections) + "\n"


def section_model(annotation: Any) -> Any:
    """The model of a nested section a field holds (itself or a list of them), else None.
    ``BackendSpec`` is a value here: its keys are listed once, under Backends."""
    from pydantic import BaseModel

    inner = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation
    if isinstance(inner, type) and issubclass(inner, BaseModel) and inner.__name__ != "BackendSpec":
        return inner
    return None


def model_sections(
    model: Any,
    path: list[str],
    *,
    key: Callable[[list[str]], str],
    title: Callable[[list[str]], str],
    value: Callable[[Any], str],
    anchor: str = "",
) -> list[str]:
    """A table of ``model``'s fields (key, type, default, description), then a section for
    each nested model, depth first. ``key`` and ``title`` show a field's path as the reader
    writes it; ``value`` a default."""
    rows, nested = [], []
    for name, field in model.model_fields.items():
        field_path = [*path, f"{name}[]" if typing.get_origin(field.annotation) is list else name]
        if section := section_model(field.annotation):
            nested.append((field_path, section))
            default = f"[below](#{slug(anchor, field_path)})"
            if field_path[-1].endswith("[]"):
                default = f"{code(value(field.get_default(call_default_factory=True)))}, items {default}"
        elif field.is_required():
            default = "required"
        else:
            default = code(value(field.get_default(call_default_factory=True)))
        kind = code(type_name(field.annotation))
        if limits := bounds(field):
            kind += f" ({limits})"
        rows.append((code(key([*path, name])), kind, default, field.description or ""))
    sections = [table(["key", "type", "default", "description"], rows)]
    for field_path, section in nested:
        sections.append(f"## {code(title(field_path))} {{#{slug(anchor, field_path)}}}")
        sections.append(rst_to_markdown(inspect.cleandoc(section.__doc__ or "")))
        sections += model_sections(section, field_path, key=key, title=title, value=value, anchor=anchor)
    return sections


def slug(anchor: str, path: list[str]) -> str:
    """``modalkit-worker``, ``yaml-app-settings-deployment-config-mounts``."""
    return "-".join([anchor, *path]).replace("_", "-").replace("[]", "").lower()


def yaml_value(value: Any) -> str:
    """A default as it is written in YAML (JSON's spelling of it)."""
    if isinstance(value, enum.Enum):
        value = value.value
    return json.dumps(str(value) if isinstance(value, Path) else value)


# --- System checks -----------------------------------------------------------------------


def checks_page() -> str:
    from django.core import checks

    from modalkit_django.checks import CHECKS

    rows = [
        (
            f"`{check_id}`",
            "Error" if check.level >= checks.ERROR else "Warning",
            check.summary,
            check.hint,
        )
        for check_id, check in CHECKS.items()
    ]
    return (
        "\n\n".join(
            [
                "# System checks",
                GENERATED_NOTE,
                "`python manage.py check` reports each configuration mistake the app can see before the "
                "first request, with one of these ids and a hint (Django also runs the checks before most "
                "management commands). Where the hint depends on the mistake, `<angle brackets>` stand for "
                "what the message fills in. The registry is `CHECKS` in `modalkit_django/checks.py`.",
                table(["id", "level", "what it means", "hint"], rows),
            ]
        )
        + "\n"
    )


# --- Command line ------------------------------------------------------------------------


def help_text(parser: argparse.ArgumentParser) -> str:
    # A fixed width, so the page does not depend on the terminal that builds it.
    with mock.patch.dict(os.environ, {"COLUMNS": "80"}):
        return parser.format_help()


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_page() -> str:
    from modalkit_django.management.commands import modalkit, modalkit_api_key, taskiq

    sections = [
        "# Command line",
        GENERATED_NOTE,
        "The app adds three management commands. Each section shows what `--help` prints.",
        "## `manage.py modalkit`",
    ]
    command = modalkit.Command().create_parser("manage.py", "modalkit")
    sections.append(fenced(help_text(command)))
    for name, sub in subparsers(command).items():
        sections += [f"### `manage.py modalkit {name}`", fenced(help_text(sub))]
    sections += [
        "## `manage.py modalkit_api_key`",
        fenced(help_text(modalkit_api_key.Command().create_parser("manage.py", "modalkit_api_key"))),
        "## `manage.py taskiq worker`",
        fenced(help_text(taskiq.Command().create_parser("manage.py", "taskiq"))),
        "Everything after `worker` goes to TaskIQ's worker, with the broker and the task modules "
        '(`modalkit_django.worker.tasks` and `MODALKIT["TASK_MODULES"]`) filled in. Unless given, '
        f"these are added: {code(' '.join(taskiq._with_defaults([])))}. TaskIQ's options:",
        fenced(taskiq_options()),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def taskiq_options() -> str:
    """The options section of TaskIQ's own worker help (its usage names the arguments we fill in)."""
    from taskiq.cli.worker.args import WorkerArgs

    out = io.StringIO()
    with (
        mock.patch.dict(os.environ, {"COLUMNS": "80"}),
        contextlib.redirect_stdout(out),
        contextlib.suppress(SystemExit),
    ):
        WorkerArgs.from_cli(["--help"])
    text = out.getvalue()
    return text[text.index("options:") :]


# --- HTTP API ----------------------------------------------------------------------------


def http_api_page() -> str:
    from modalkit_django.urls import api

    schema = api.get_openapi_schema()
    sections = [
        "# HTTP API",
        GENERATED_NOTE,
        "The operations and schemas below are the OpenAPI schema the demo project serves "
        '(`/api/openapi.json`, browsable at `/api/docs`), with `include("modalkit_django.urls")` '
        "mounted at the root, so the API is under `/api/`. In your project the prefix is where you "
        "include it, and `message` and `result` are "
        "typed by your pipeline's `input_model` and `output_model` (here the demo's "
        "`SentimentRequest` and `SentimentResponse`). Errors are listed with their causes in "
        "[HTTP errors](http-errors.md).",
        "## Authentication",
        security_text(schema),
        "## Operations",
    ]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            sections += operation_section(method, path, operation)
    sections.append("## Schemas")
    for name, component in schema["components"]["schemas"].items():
        sections += schema_section(name, component)
    return "\n\n".join(section for section in sections if section) + "\n"


def security_text(schema: dict[str, Any]) -> str:
    lines = []
    for name, scheme in schema["components"].get("securitySchemes", {}).items():
        if scheme["type"] == "http":
            lines.append(f"- `{name}`: `Authorization: {scheme['scheme'].title()} <key>`")
        else:
            lines.append(f"- `{name}`: the `{scheme['name']}` {scheme['in']}")
    return "Operations marked *authenticated* accept any of:\n\n" + "\n".join(lines)


def schema_type(schema: dict[str, Any]) -> str:
    """A JSON schema in a few words, with links to the named schemas."""
    if "$ref" in schema:
        name = schema["$ref"].rpartition("/")[2]
        return f"[{name}](#schema-{name.lower()})"
    if "anyOf" in schema or "oneOf" in schema:
        return " or ".join(schema_type(option) for option in schema.get("anyOf", schema.get("oneOf", [])))
    if "enum" in schema:
        return " or ".join(f"`{json.dumps(value)}`" for value in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {schema_type(schema.get('items', {}))}"
    if "format" in schema:
        kind = f"{kind} ({schema['format']})"
    return kind


def constraints(schema: dict[str, Any]) -> str:
    names = {"minimum": "≥", "maximum": "≤", "minLength": "length ≥", "maxLength": "length ≤"}
    found = [f"{symbol} {schema[key]}" for key, symbol in names.items() if key in schema]
    for option in schema.get("anyOf", []):
        found += [f"{symbol} {option[key]}" for key, symbol in names.items() if key in option]
    if "default" in schema:
        found.append(f"default `{json.dumps(schema['default'])}`")
    return "; ".join(found)


def describe(description: str, limits: str) -> str:
    return f"{description} ({limits})" if description and limits else description or limits


def operation_section(method: str, path: str, operation: dict[str, Any]) -> list[str]:
    sections = [f"### {method.upper()} `{path}`", rst_to_markdown(operation.get("summary", ""))]
    if description := operation.get("description"):
        sections.append(description)
    if operation.get("security"):
        sections.append("*Authenticated.*")
    if parameters := operation.get("parameters"):
        rows = [
            (
                code(parameter["name"]),
                parameter["in"],
                "yes" if parameter.get("required") else "no",
                schema_type(parameter["schema"]),
                describe(parameter.get("description", ""), constraints(parameter["schema"])),
            )
            for parameter in parameters
        ]
        sections.append(table(["parameter", "in", "required", "type", "description"], rows))
    if body := operation.get("requestBody"):
        for media_type, content in body["content"].items():
            sections.append(f"Request body (`{media_type}`): {schema_type(content['schema'])}.")
    rows = []
    for status, response in sorted(operation["responses"].items(), key=lambda item: str(item[0])):
        for media_type, content in response.get("content", {}).items():
            rows.append((code(str(status)), response["description"], response_body(media_type, content)))
    sections.append(table(["status", "meaning", "body"], rows))
    return sections


def response_body(media_type: str, content: dict[str, Any]) -> str:
    events = [
        option["properties"]["event"]["const"]
        for option in content.get("schema", {}).get("oneOf", [])
        if "const" in option.get("properties", {}).get("event", {})
    ]
    if events:  # a stream: its schema is one event's (OpenAPI 3.1 has no itemSchema)
        return f"`{media_type}`: events {', '.join(code(event) for event in events)}"
    return schema_type(content["schema"]) if "schema" in content else f"`{media_type}`"


def schema_section(name: str, component: dict[str, Any]) -> list[str]:
    sections = [f"### {name} {{#schema-{name.lower()}}}"]
    if description := component.get("description"):
        sections.append(description)
    if "enum" in component:
        sections.append("One of " + ", ".join(f"`{json.dumps(value)}`" for value in component["enum"]) + ".")
        return sections
    required = set(component.get("required", []))
    rows = [
        (
            code(field),
            schema_type(prop),
            "yes" if field in required else "no",
            describe(prop.get("description", ""), constraints(prop)),
        )
        for field, prop in component.get("properties", {}).items()
    ]
    if rows:
        sections.append(table(["field", "type", "required", "description"], rows))
    if component.get("additionalProperties") is False:
        sections.append("No other fields are accepted.")
    return sections


# --- Queue messages ----------------------------------------------------------------------

# What each field of a queue message means: the payload builder says which fields each
# shape has; what they mean is written here, and a field added without a meaning fails the build.
MESSAGE_FIELDS = {
    "status": '`"success"`; on a failure `"error"`; for an output whose status is not "success", that status.',
    "error": "The error's message (ModalKit's `Internal Server Error. Error log: …` in the `modalkit` format); "
    "`null` or the pipeline's own for an output whose status is not success.",
    "error_type": "The exception's class name, or ours: `Expired`, `Canceled`, `WorkerLost`, `InferenceError` …",
    "original_message": "The request as the client sent it (`message`, `success_queue`, `failure_queue`, `meta`), "
    "as ModalKit's `DelayedFailureOutputModel`, so that a consumer can resubmit it.",
    "meta": "The request's `meta`, unchanged.",
    "job_id": "The job's id.",
    "model_name": "The model that ran.",
    "timestamp": "When the message was made (ISO 8601, UTC).",
    "submitted_by": "Who asked: the owner's user id (`null` for ModalKit's static key) and the API key's "
    'non-secret prefix (`""` for the static key or the admin).',
    "sentiment": "The demo pipeline's output field; your `output_model`'s fields take its place.",
    "confidence": "The demo pipeline's output field; your `output_model`'s fields take its place.",
}


def example_jobs() -> dict[str, Any]:
    """One finished job of each shape, as the worker leaves them (unsaved)."""
    from modalkit_django.models import Job

    request = {
        "message": {"text": "I love this film"},
        "meta": {"request_id": "r-1"},
        "success_queue": "sentiment_results",
        "failure_queue": "sentiment_errors",
        "model_name": "sentiment",
        "owner_id": 1,
        "api_key_prefix": "mk_AbC123",
    }
    output = {"status": "success", "error": None, "sentiment": "positive", "confidence": 0.95}
    refused = {**output, "status": "error", "error": "text too long", "sentiment": "", "confidence": 0.0}
    return {
        "success": Job(id=uuid.UUID(int=1), status=Job.Status.SUCCEEDED, result=output, **request),
        "failure": Job(
            id=uuid.UUID(int=2),
            status=Job.Status.FAILED,
            error={"type": "ValueError", "message": "the model cannot read 'explode'"},
            **request,
        ),
        "output whose status is not success": Job(
            id=uuid.UUID(int=3),
            status=Job.Status.FAILED,
            error={"type": "InferenceError", "message": "text too long", "output": refused},
            **request,
        ),
    }


def messages_page() -> str:
    from django.conf import settings
    from django.test import override_settings

    from modalkit_django.jobs.messages import queue_payload

    now = dt.datetime(2026, 11, 28, 14, 31, 29, 430000, tzinfo=dt.UTC)
    payloads: dict[tuple[str, str], dict[str, Any]] = {}
    for message_format in ("extended", "modalkit"):
        with override_settings(MODALKIT={**settings.MODALKIT, "MESSAGE_FORMAT": message_format}):
            for shape, job in example_jobs().items():
                payloads[message_format, shape] = queue_payload(job, now)
    sections = [
        "# Queue messages",
        GENERATED_NOTE,
        "When a job finishes, the message below goes to the request's `success_queue` (a success) or "
        "`failure_queue` (anything else), through the queue backend its name is routed to. Each backend "
        "sends the same payload, as compact JSON with sorted keys, and gives it a `message_id` "
        "(`<job_id>:<route>`, with `:rerunN` after a re-run) that stays the same across retries: "
        "consumers drop duplicates by it. These examples are made by the payload builder "
        "(`modalkit_django.jobs.messages.queue_payload`) from the demo's jobs.",
        '`MODALKIT["MESSAGE_FORMAT"]` chooses between two formats: `"extended"` (the default) is '
        "ModalKit's messages with fields of ours beside them; `\"modalkit\"` is exactly ModalKit's, for "
        "consumers whose models forbid extra fields.",
    ]
    for message_format in ("extended", "modalkit"):
        sections.append(f'## `"{message_format}"`')
        for shape in example_jobs():
            sections += [
                f"### {shape.capitalize()}",
                fenced(json.dumps(payloads[message_format, shape], indent=2), "json"),
            ]
    sections += ["## Fields", message_fields_table(payloads), "## Webhook requests", webhook_example()]
    return "\n\n".join(sections) + "\n"


def message_fields_table(payloads: dict[tuple[str, str], dict[str, Any]]) -> str:
    fields = list(dict.fromkeys(key for payload in payloads.values() for key in payload))
    missing = [field for field in fields if field not in MESSAGE_FIELDS]
    if missing:
        raise RuntimeError(f"docs/hooks.py: say what these message fields mean in MESSAGE_FIELDS: {missing}")
    shapes = list(dict.fromkeys(shape for _, shape in payloads))

    def where(field: str, shape: str) -> str:
        formats = [fmt for fmt in ("extended", "modalkit") if field in payloads[fmt, shape]]
        return {2: "both", 1: f"`{formats[0]}`" if formats else "", 0: "—"}[len(formats)]

    rows = [(code(field), *(where(field, shape) for shape in shapes), MESSAGE_FIELDS[field]) for field in fields]
    return "\n\n".join(
        [
            "Which shape carries each field, in which format (`both`, or only `extended`):",
            table(["field", *shapes, "meaning"], rows),
        ]
    )


def webhook_example() -> str:
    from modalkit_django.queues.base import QueueMessage
    from modalkit_django.webhooks import signature_headers

    message = QueueMessage(
        message_id=f"{uuid.UUID(int=1)}:success",
        queue_name="sentiment_results",
        route="success",
        job_id=str(uuid.UUID(int=1)),
        payload={"status": "success", "job_id": str(uuid.UUID(int=1))},
    )
    body = message.body()
    secret = "whsec_" + "ZXhhbXBsZS1zZWNyZXQtZm9yLXRoZS1kb2NzLW9ubHk="  # an example: base64 of 32 bytes
    headers = {
        "content-type": "application/json",
        "user-agent": "modalkit-django",
        **signature_headers(msg_id=message.message_id, body=body, secret=secret, timestamp=1795876289),
    }
    request = "\n".join(
        ["POST /your/webhook HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items()), "", body]
    )
    return "\n\n".join(
        [
            "The webhook backend (`modalkit_django.queues.webhook.WebhookBackend`) posts the payload, signed "
            "in the [Standard Webhooks](https://www.standardwebhooks.com/) format. `webhook-id` is the "
            "delivery's `message_id`, `webhook-timestamp` the unix time of this attempt, and "
            "`webhook-signature` `v1,` followed by the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under "
            "each secret, space-separated. With the secret `" + secret + "` (an example) and a short payload:",
            fenced(request, "http"),
            "Receivers check it with `modalkit_django.webhooks.verify`: see "
            "[Verify webhooks](../how-to/verify-webhooks.md).",
        ]
    )


# --- Python API --------------------------------------------------------------------------


def python_api_page() -> str:
    import modalkit_django

    groups: dict[str, list[str]] = {
        "Functions": [],
        "Classes": [],
        "Models": [],
        "Statuses": [],
        "Exceptions": [],
    }
    for name in modalkit_django.__all__:
        if name != "__version__":
            groups[api_group(getattr(modalkit_django, name))].append(name)
    sections = [
        "# Python API",
        GENERATED_NOTE,
        "What a host project may use, imported from the package itself "
        "(`from modalkit_django import submit_job`): the names in `modalkit_django.__all__`. Every other "
        "module is internal, except the dotted paths that settings name (queue backends, inference "
        "clients, `urls`, `metrics.urls`, `asgi`, `serve`, `webhooks`).",
    ]
    for group, names in groups.items():
        sections.append(f"## {group}")
        if group == "Exceptions":
            sections.append(fenced(exception_tree()))
        for name in names:
            sections += api_entry(name, getattr(modalkit_django, name))
    return "\n\n".join(section for section in sections if section) + "\n"


def api_group(value: Any) -> str:
    from django.db import models

    if not isinstance(value, type):
        return "Functions"
    if issubclass(value, BaseException):
        return "Exceptions"
    if issubclass(value, models.Model):
        return "Models"
    if issubclass(value, enum.Enum):
        return "Statuses"
    return "Classes"


def own_docstring(value: Any) -> str:
    """The first paragraph of the docstring ``value`` itself has (not one it inherits or Django wrote)."""
    doc = value.__dict__.get("__doc__") if isinstance(value, type) else value.__doc__
    if not doc or doc.startswith(f"{getattr(value, '__name__', '')}("):
        return ""
    return rst_to_markdown(inspect.cleandoc(doc).split("\n\n")[0])


def api_entry(name: str, value: Any) -> list[str]:
    sections = [f"### `{name}`"]
    if signature := signature_text(name, value):
        sections.append(fenced(signature, "python"))
    if doc := own_docstring(value):
        sections.append(doc)
    if isinstance(value, type) and issubclass(value, enum.Enum):
        sections.append("Values: " + ", ".join(choice_text(member) for member in value) + ".")
    if isinstance(value, type) and issubclass(value, BaseException):
        sections.append("Subclass of " + " and ".join(code(base.__name__) for base in value.__bases__) + ".")
    if hasattr(value, "_meta") and hasattr(value._meta, "concrete_fields"):
        sections.append("Fields: " + ", ".join(code(field.name) for field in value._meta.concrete_fields) + ".")
    if name != getattr(value, "__name__", name):
        sections.append(f"Defined as `{value.__module__}.{value.__name__}`.")
    return sections


def choice_text(member: Any) -> str:
    label = getattr(member, "label", None)
    value = str(member.value)
    return code(value) if label in (None, value) else f"{code(value)} ({label})"


def signature_text(name: str, value: Any) -> str:
    """``def name(...)`` or ``class Name(...)``, with the annotations as written in the source."""
    from django.db import models

    if isinstance(value, type):
        if issubclass(value, BaseException | models.Model | enum.Enum):
            return ""
        bases = ", ".join(base.__name__ for base in value.__bases__ if base is not object)
        header = f"class {name}({bases})" if bases else f"class {name}"
        try:
            return f"{header}:\n    def __init__{parameters_text(inspect.signature(value), '    ', first='self')}"
        except (TypeError, ValueError):
            return header
    prefix = "async def" if inspect.iscoroutinefunction(value) else "def"
    return f"{prefix} {name}{parameters_text(inspect.signature(value))}"


def parameters_text(signature: inspect.Signature, indent: str = "", first: str = "") -> str:
    """``(a: int, *, b: str = '')``, one parameter a line when that is long."""
    parts: list[str] = [first] if first else []
    keyword_only_marked = False
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY and not keyword_only_marked:
            parts.append("*")
        keyword_only_marked |= parameter.kind in (parameter.KEYWORD_ONLY, parameter.VAR_POSITIONAL)
        text = {parameter.VAR_POSITIONAL: "*", parameter.VAR_KEYWORD: "**"}.get(parameter.kind, "") + parameter.name
        if parameter.annotation is not parameter.empty:
            text += f": {annotation_text(parameter.annotation)}"
        if parameter.default is not parameter.empty:
            text += f" = {parameter.default!r}"
        parts.append(text)
    returns = signature.return_annotation
    arrow = f" -> {annotation_text(returns)}" if returns is not signature.empty else ""
    one_line = f"({', '.join(parts)}){arrow}"
    if len(one_line) <= 80:
        return one_line
    return "(\n" + "".join(f"{indent}    {part},\n" for part in parts) + f"{indent}){arrow}"


def annotation_text(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else type_name(annotation)


def exception_tree() -> str:
    from modalkit_django import exceptions

    doc = inspect.getdoc(exceptions) or ""
    return textwrap.dedent(doc.split("::", 1)[1].split("\n\n")[1]) if "::" in doc else ""


# --- Changelog ---------------------------------------------------------------------------


def changelog_page() -> str:
    """CHANGELOG.md as it is at the repository's root, so that pages can link to its sections."""
    return (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
