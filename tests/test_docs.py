"""The docs name only what exists: files, settings, check ids, commands, dotted paths.

The scanner reads ``README.md``, every page under ``docs/`` and the pages ``docs/hooks.py``
generates, and reports each reference to something the repository does not have. It is
tested on planted bad references too, so that a check that silently stopped checking fails.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django.conf import global_settings
from django.core.management import get_commands, load_command_class
from django.core.management.base import CommandError
from pydantic import BaseModel

from modalkit_django.checks import CHECKS
from modalkit_django.conf import ModalkitSettings

from .conftest import ROOT

DOCS = ROOT / "docs"
README = ROOT / "README.md"

# Files the docs present as the reader's own, in the host-project example.
READER_FILES = ("mysite/", "shop/", "myapp/", "gunicorn.conf.py")
# Where a bare name like `asgi.py` or `api/` may live.
PATH_BASES = (ROOT, ROOT / "modalkit_django")
# Tokens under these folders name repository files wherever they appear, code blocks included.
REPO_FOLDERS = r"(?:bench|tests|project|modalkit_django|docs|scripts|\.ci)"
FILE_EXTENSIONS = ("py", "md", "yaml", "yml", "toml", "txt", "png", "json", "cfg", "sh", "html", "ini")

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")
SNIPPET = re.compile(r'^--8<-- "([^"]+)"', re.M)
PATH_TOKEN = re.compile(r"^[\w.-]+(?:/[\w.-]+)*/?$")
REPO_PATH = re.compile(rf"(?<![\w/.:~$-]){REPO_FOLDERS}/[\w./-]*[\w/]")
MEDIA_TYPE = re.compile(r"^(?:application|text|image|multipart)/")
SETTING = re.compile(r"\bMODALKIT((?:\[[\"'][A-Za-z_]+[\"']\])+)")
SECTION_SETTING = re.compile(r"(?<![\]\w\"'])(WORKER|DELIVERY|API|BROKER|METRICS)((?:\[[\"'][A-Za-z_]+[\"']\])+)")
KEY = re.compile(r"\[[\"']([A-Za-z_]+)[\"']\]")
UPPER_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
# Ours are E0NN and W0NN; E402 and the like are linters'.
CHECK_ID = re.compile(r"(?<![\w.])(?:modalkit_django\.)?([EW]0\d\d)\b")
CHECK_RANGE = re.compile(r"\b([EW]0\d\d)`?\s*(?:\u2013|-|to)\s*`?(?:modalkit_django\.)?([EW]0\d\d)\b")
MANAGE_PY = re.compile(r"(?<!usage: )\bmanage\.py\s+([^\n`]*)")
SERVE = re.compile(r"-m modalkit_django\.serve\s+([^\n`]*)")
MAKE = re.compile(r"(?:^|[\s;&|(`])make\s+([^\n`#]*)")
DOTTED = re.compile(r"\bmodalkit_django(?:\.[A-Za-z_]\w*)+(?::\w+)?")
PROJECT_DOTTED = re.compile(r"(?<![\w./])project(?:\.[A-Za-z_]\w*)+(?::\w+)?")
OUR_NAME = re.compile(r"^modalkit_[a-z0-9_]+$")


@dataclass(frozen=True)
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass(frozen=True)
class Doc:
    """A Markdown text split into what the scanner reads differently."""

    text: str
    code_blocks: list[str]
    prose: str
    spans: list[str]

    @classmethod
    def parse(cls, text: str) -> Doc:
        blocks = [match.group(0) for match in FENCE.finditer(text)]
        prose = FENCE.sub("", text)
        return cls(text=text, code_blocks=blocks, prose=prose, spans=CODE_SPAN.findall(prose))

    def code(self) -> Iterator[str]:
        """Every piece of code: the fenced blocks and the inline spans."""
        yield from self.code_blocks
        yield from self.spans


# --- What exists -------------------------------------------------------------------------


@cache
def makefile_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text()
    return frozenset(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.M))


@cache
def source_text() -> str:
    """The code a backticked name may come from."""
    paths = [*(ROOT / "modalkit_django").rglob("*.py"), *(ROOT / "project").rglob("*.py"), ROOT / "Makefile"]
    paths += [DOCS / "hooks.py", ROOT / "pyproject.toml"]
    paths += [*(ROOT / "scripts").iterdir(), *(ROOT / ".ci").iterdir()]
    # The tests, but not this one: its planted bad names must stay unknown.
    paths += [path for path in (ROOT / "tests").glob("*.py") if path.name != Path(__file__).name]
    return "\n".join(path.read_text(errors="replace") for path in paths if path.is_file())


def in_source(name: str) -> bool:
    """``name`` as a whole word of the code (``LEASE_SECOND`` is not ``LEASE_SECONDS``)."""
    return re.search(rf"\b{re.escape(name)}\b", source_text()) is not None


@cache
def setting_names() -> frozenset[str]:
    """Every key of every section of ``MODALKIT``, upper case."""
    names: set[str] = set()

    def walk(model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            names.add(name.upper())
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                walk(field.annotation)

    walk(ModalkitSettings)
    return frozenset(names)


@cache
def generated_pages() -> dict[str, str]:
    return {src_uri: page() for src_uri, page in hooks().pages().items()}


@cache
def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def path_exists(token: str) -> bool:
    token = token.rstrip("/") or token
    return any((base / token).exists() for base in PATH_BASES)


def resolve_dotted(path: str) -> bool:
    """``a.b.C`` (or ``a.b:C``): the longest importable module, then attributes."""
    module_path, _, attribute = path.partition(":")
    parts = module_path.split(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old paths that still work warn as they forward
        for split in range(len(parts), 0, -1):
            try:
                value: Any = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            try:
                for name in [*parts[split:], *([attribute] if attribute else [])]:
                    value = getattr(value, name)
            except AttributeError:
                return False
            return True
    return False


def setting_problem(keys: list[str]) -> str | None:
    """Why ``MODALKIT[keys[0]][keys[1]]…`` is not a setting, or None."""
    model: Any = ModalkitSettings
    for depth, key in enumerate(keys):
        fields = {name.upper(): field for name, field in model.model_fields.items()}
        if key not in fields:
            return f"no key {key!r} in {'MODALKIT' + ''.join(f'[{k!r}]' for k in keys[:depth])}"
        annotation = fields[key].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None  # a value, or a dict whose keys are the user's (aliases, OPTIONS)
        model = annotation
    return None


def parse_command_line(args: list[str], *, mention: bool = False) -> str | None:
    """Why ``manage.py ARGS`` would not parse, or None.

    A ``mention`` (an inline span such as ``manage.py modalkit purge``) names a command,
    so the options it leaves out are not missing.
    """
    name, rest = args[0], args[1:]
    if name.startswith("<"):
        return None  # a placeholder: manage.py <command>
    commands = get_commands()
    if name not in commands:
        return f"no command manage.py {name}"
    if not rest:
        return None
    parser = load_command_class(commands[name], name).create_parser("manage.py", name)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            options = parser.parse_args(rest)
    except CommandError as exc:
        if mention and "arguments are required" in str(exc):
            return None
        return f"manage.py {' '.join(args)}: {exc}"
    except SystemExit as exc:
        return None if exc.code == 0 else f"manage.py {' '.join(args)}: exit {exc.code}"
    if name == "taskiq":
        return parse_taskiq(options.taskiq_args)
    return None


def parse_taskiq(args: list[str]) -> str | None:
    from taskiq.cli.worker.args import WorkerArgs

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            WorkerArgs.from_cli(["modalkit_django.broker:get_broker", *args])
    except SystemExit as exc:
        return None if exc.code == 0 else f"taskiq worker {' '.join(args)}: not TaskIQ's options"
    return None


def parse_serve(args: list[str]) -> str | None:
    from modalkit_django import serve

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            serve.parse_args(args)
    except SystemExit as exc:
        return None if exc.code == 0 else f"python -m modalkit_django.serve {' '.join(args)}: exit {exc.code}"
    return None


def split_command(text: str) -> list[str] | None:
    """A shell command line's words, up to a comment, a continuation, the next command or the prose around it
    (``(… manage.py modalkit health)``, ``manage.py modalkit: the …``); ``$VARIABLE`` words
    stand for a value. None if it does not split."""
    text = text.split(" # ")[0]
    text = re.split(r"\)|;|&&|,\s|:\s|:$", text)[0].rstrip().rstrip("\\").strip()
    try:
        words = shlex.split(text)
    except ValueError:
        return None
    return ["1" if word.startswith("$") else word for word in words]


# --- The scanner -------------------------------------------------------------------------


def scan(text: str, where: str, *, page: Path | None = None, generated: frozenset[str] = frozenset()) -> list[Problem]:
    """Every reference in ``text`` to something that does not exist.

    ``page`` is the document's own path, for its relative links; ``generated`` the pages
    (relative to docs/) that exist only once the site is built.
    """
    doc = Doc.parse(text)
    found: list[str] = []
    found += file_problems(doc, page, generated)
    found += setting_problems(doc)
    found += check_problems(doc)
    found += command_problems(doc)
    found += dotted_problems(doc)
    return [Problem(where, what) for what in dict.fromkeys(found)]


def file_problems(doc: Doc, page: Path | None, generated: frozenset[str]) -> list[str]:
    problems = []
    for span in doc.spans:
        token = span.strip()
        looks_like_path = PATH_TOKEN.match(token) and ("/" in token or token.rsplit(".", 1)[-1] in FILE_EXTENSIONS)
        if not looks_like_path or MEDIA_TYPE.match(token) or token.startswith(READER_FILES):
            continue
        if "/" in token and re.fullmatch(r"[a-z0-9-]+(?:\.[a-z0-9-]+)+", token.split("/")[0]):
            continue  # docker.io/library/python: a registry, not a file
        if not path_exists(token):
            problems.append(f"no file {token}")
    for match in REPO_PATH.finditer(doc.text):
        if not path_exists(match.group(0)):
            problems.append(f"no file {match.group(0)}")
    for target in LINK.findall(doc.prose):
        path = target.split("#")[0]
        if not path or re.match(r"^[a-z]+:", path) or page is None:
            continue
        resolved = (page.parent / path).resolve()
        in_docs = resolved.is_relative_to(DOCS) and resolved.relative_to(DOCS).as_posix() in generated
        if not resolved.exists() and not in_docs:
            problems.append(f"a link to {target}, which does not exist")
    for include in SNIPPET.findall(doc.prose):
        file, _, section = include.partition(":")
        if not (ROOT / file).exists():
            problems.append(f"an include of {file}, which does not exist")
        elif section and f"--8<-- [start:{section}]" not in (ROOT / file).read_text():
            problems.append(f"an include of {include}, a section {file} does not mark")
    return problems


def setting_problems(doc: Doc) -> list[str]:
    problems = []
    for match in SETTING.finditer(doc.text):
        if why := setting_problem(KEY.findall(match.group(1))):
            problems.append(f"MODALKIT{match.group(1)}: {why}")
    for match in SECTION_SETTING.finditer(doc.text):
        if why := setting_problem([match.group(1), *KEY.findall(match.group(2))]):
            problems.append(f"{match.group(0)}: {why}")
    known = setting_names() | {name for name in dir(global_settings) if name.isupper()}
    for span in doc.spans:
        name = span.strip()
        if UPPER_NAME.match(name) and name not in known and not in_source(name):
            problems.append(f"{name}: neither a setting nor a name the code uses")
    return problems


def check_problems(doc: Doc) -> list[str]:
    problems = [
        f"check {code}: not in checks.CHECKS"
        for code in CHECK_ID.findall(doc.text)
        if f"modalkit_django.{code}" not in CHECKS
    ]
    for first, last in CHECK_RANGE.findall(doc.text):
        same_kind = sorted(
            check_id.rpartition(".")[2] for check_id in CHECKS if check_id.rpartition(".")[2][0] == first[0]
        )
        if same_kind and first == same_kind[0] and last != same_kind[-1]:
            problems.append(f"the range {first}\N{EN DASH}{last} stops short of {same_kind[-1]}")
    return problems


def command_problems(doc: Doc) -> list[str]:
    problems = []
    for code in doc.code():
        for match in MANAGE_PY.finditer(code):
            args = split_command(match.group(1))
            if args is None:
                problems.append(f"manage.py {match.group(1)}: does not split into words")
            elif args and (why := parse_command_line(args, mention=code in doc.spans)):
                problems.append(why)
        for match in SERVE.finditer(code):
            args = split_command(match.group(1))
            if args and (why := parse_serve(args)):
                problems.append(why)
        for match in MAKE.finditer(code):
            words = [
                word for word in (split_command(match.group(1)) or []) if "=" not in word and not word.startswith("-")
            ]
            if words and re.fullmatch(r"[a-z][\w.-]*", words[0]) and words[0] not in makefile_targets():
                problems.append(f"make {words[0]}: no such target in the Makefile")
    return problems


def dotted_problems(doc: Doc) -> list[str]:
    paths = [match.group(0) for match in DOTTED.finditer(doc.text) if not CHECK_ID.fullmatch(match.group(0))]
    paths += [match.group(0) for code in doc.code() for match in PROJECT_DOTTED.finditer(code)]
    problems = [f"{path}: cannot be imported" for path in dict.fromkeys(paths) if not resolve_dotted(path)]
    for span in doc.spans:
        name = re.sub(r"_(total|bucket|count|sum)$", "", span.strip())
        if OUR_NAME.match(name) and not in_source(name):
            problems.append(f"{span.strip()}: not a name the code uses")
    return problems


# --- The tests ---------------------------------------------------------------------------


def written_docs() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("path", written_docs(), ids=lambda path: str(path.relative_to(ROOT)))
def test_the_written_docs_name_only_what_exists(path: Path) -> None:
    generated = frozenset(generated_pages())
    problems = scan(path.read_text(), str(path.relative_to(ROOT)), page=path, generated=generated)
    assert problems == [], "\n".join(str(problem) for problem in problems)


def test_the_generated_pages_name_only_what_exists() -> None:
    generated = frozenset(generated_pages())
    problems = [
        problem
        for src_uri, text in generated_pages().items()
        if src_uri != "changelog.md"  # the changelog names what was, as well as what is
        for problem in scan(text, f"docs/{src_uri} (generated)", page=DOCS / src_uri, generated=generated)
    ]
    assert problems == [], "\n".join(str(problem) for problem in problems)


PLANTED = """
See `tests/test_nowhere.py` and [the guide](how-to/nowhere.md); `mysite/settings.py` is yours.

--8<-- "README.md:no-such-section"

Set MODALKIT["WORKER"]["LEASE_SECONDZ"], or WORKER["NOPE"], or `SWEEP_SECONDZ`, or `LEASE_SECOND`.
Mistakes are reported as E001\N{EN DASH}E009, and as modalkit_django.E099.

```sh
python manage.py modalkit retrie --status failed
python manage.py modalkit retry --older-than yesterday
python manage.py frobnicate
python manage.py taskiq worker --no-such-option
python -m modalkit_django.serve mysite.asgi:application --no-such-option
make deploy-everything
```

Import `modalkit_django.heartbeats.stale_after` or `modalkit_django.services.submit_job`;
scrape `modalkit_jobs_lost_total`.
"""


# A range of check ids must reach the last one: the newest error id.
LAST_ERROR = max(check_id for check_id in CHECKS if ".E" in check_id).removeprefix("modalkit_django.")


def test_a_planted_bad_reference_of_each_kind_is_caught() -> None:
    problems = [problem.what for problem in scan(PLANTED, "planted", page=DOCS / "index.md")]
    expected = [
        "no file tests/test_nowhere.py",
        "a link to how-to/nowhere.md, which does not exist",
        "an include of README.md:no-such-section, a section README.md does not mark",
        "MODALKIT[\"WORKER\"][\"LEASE_SECONDZ\"]: no key 'LEASE_SECONDZ' in MODALKIT['WORKER']",
        "WORKER[\"NOPE\"]: no key 'NOPE' in MODALKIT['WORKER']",
        "SWEEP_SECONDZ: neither a setting nor a name the code uses",
        "LEASE_SECOND: neither a setting nor a name the code uses",
        "check E099: not in checks.CHECKS",
        f"the range E001\N{EN DASH}E009 stops short of {LAST_ERROR}",
        "no command manage.py frobnicate",
        "make deploy-everything: no such target in the Makefile",
        "modalkit_django.heartbeats.stale_after: cannot be imported",
        "modalkit_django.services.submit_job: cannot be imported",
        "modalkit_jobs_lost_total: not a name the code uses",
    ]
    for what in expected:
        assert what in problems, f"not caught: {what}\ngot: {problems}"
    for command in ("modalkit retrie", "modalkit retry --older-than yesterday", "--no-such-option"):
        assert any(command in what for what in problems), f"not caught: {command}\ngot: {problems}"
    assert sum("--no-such-option" in what for what in problems) == 2
    assert not any("file mysite" in what for what in problems)  # the reader's own file


def test_a_good_reference_of_each_kind_passes() -> None:
    good = f"""
See `tests/test_packaging.py`, `bench/throughput.py`, `api/`, `project/settings.py` and
[the settings](reference/settings.md), with MODALKIT["WORKER"]["LEASE_SECONDS"],
MODALKIT["QUEUES"]["sqs"]["OPTIONS"], WORKER["BATCH_SIZE"], `DATA_UPLOAD_MAX_MEMORY_SIZE`,
`MODALKIT_APP_POSTFIX`, E001\N{EN DASH}{LAST_ERROR}, modalkit_django.W003 and `modalkit_jobs_submitted_total`.

```sh
python manage.py modalkit retry --status failed --older-than 1h --dry-run
python manage.py modalkit_api_key <username> --allow-queue "shop-*"  # prints the key
python manage.py taskiq worker --workers 2 --max-async-tasks 400
python -m modalkit_django.serve mysite.asgi:application --processes 2 --no-access-log
INFERENCE=modal make run
```

Import `modalkit_django.conf.get_settings`, `modalkit_django.broker:get_broker` and
`project.sentiment.SentimentPipeline`; `text/event-stream` is a media type.
"""
    generated = frozenset(generated_pages())
    assert scan(good, "good", page=DOCS / "index.md", generated=generated) == []


def test_the_readme_fits_in_a_few_screens() -> None:
    assert len(README.read_text().splitlines()) <= 250


def test_every_folder_of_the_package_is_on_the_architecture_page() -> None:
    page = (DOCS / "explanation" / "architecture.md").read_text()
    folders = [
        path.name for path in (ROOT / "modalkit_django").iterdir() if path.is_dir() and path.name != "__pycache__"
    ]
    missing = [folder for folder in folders if f"  {folder}/" not in page]
    assert missing == []


def test_the_reference_lists_every_setting_and_check() -> None:
    settings_page = generated_pages()["reference/settings.md"]
    for name in setting_names():
        assert f'["{name}"]' in settings_page or f"`{name}`" in settings_page, name
    checks_page = generated_pages()["reference/checks.md"]
    for check_id in CHECKS:
        assert f"`{check_id}`" in checks_page


@pytest.mark.e2e
def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent), "NO_MKDOCS_2_WARNING": "1", "HOME": str(tmp_path)}
    result = subprocess.run(
        [Path(sys.executable).parent / "mkdocs", "build", "--strict", "--site-dir", tmp_path / "site"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def test_the_command_line_parser_is_what_manage_py_uses() -> None:
    # The scanner parses documented command lines with the commands' own parsers; make sure
    # those parsers reject what the real command would.
    assert parse_command_line(["modalkit", "purge"]) is not None  # --older-than is required
    assert parse_command_line(["modalkit", "purge", "--older-than", "30d"]) is None


def test_every_line_of_the_guarantee_table_names_a_test_that_exists() -> None:
    """The table's promises are tests: each line names its own (a prefix ending in "…", a
    whole name, a test module or a make target), and a name no test has any more fails."""
    page = (DOCS / "explanation" / "guarantees.md").read_text()
    table = page.split("## What is promised")[1].split("### What runs twice")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| what ", "| ---"))]
    assert len(rows) >= 10
    shown = [row.rsplit("|", 2)[-2] for row in rows]
    assert [
        row for row, proof in zip(rows, shown, strict=True) if not re.search(r"`test_|make faults|tests/", proof)
    ] == []
    test_files = (ROOT / "tests").glob("test_*.py")
    tests = set(re.findall(r"^def (test_\w+)", "\n".join(path.read_text() for path in test_files), re.M))
    named = re.findall(r"`(test_[a-z0-9_]+)(…?)`", table)
    missing = [
        name for name, cut in named if not any(test == name or (cut and test.startswith(name)) for test in tests)
    ]
    assert missing == []
    assert all(path_exists(token) for token in re.findall(r"`(tests/[\w/]+\.py)`", table))
