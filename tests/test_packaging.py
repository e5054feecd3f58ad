"""The package as users get it: the wheel and sdist, and a fresh project built from the README.

The host-project test is the README's "Using it in your project" section, executed: a
new virtualenv gets the built wheel (no extras), ``django-admin startproject`` makes a
project, the README's marked blocks are written into it, and a job runs through the
embedded broker. It runs on whatever Python and Django the suite runs on, so each CI
row checks its own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path
from typing import Any

import django
import httpx
import pytest
from packaging.requirements import Requirement

from modalkit_django import __version__

from .conftest import ROOT, wait_until
from .private_services import free_port

pytestmark = pytest.mark.e2e

UV = Path(sys.executable).parent / "uv"


def run(*command: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(UV, "build", "--out-dir", out, ROOT)
    return out


def test_the_wheel_holds_the_app_only(dist: Path) -> None:
    [wheel] = dist.glob("*.whl")
    assert wheel.name == f"modalkit_django-{__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    info = f"modalkit_django-{__version__}.dist-info/"
    assert {name.split("/")[0] + "/" for name in names} == {"modalkit_django/", info}
    for required in (
        "modalkit_django/py.typed",
        "modalkit_django/migrations/0001_initial.py",
        f"{info}licenses/LICENSE",
    ):
        assert required in names
    metadata = Parser().parsestr(zipfile.ZipFile(wheel).read(f"{info}METADATA").decode())
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.11"
    requirements = metadata.get_all("Requires-Dist") or []
    assert "django<6.2,>=5.2" in [requirement.lower() for requirement in requirements]
    pinned = [text for text in requirements if any(spec.operator == "==" for spec in Requirement(text).specifier)]
    assert pinned == []  # ranges a host project's own pins fit in
    assert set(metadata.get_all("Provides-Extra") or []) == {
        "redis",
        "sqs",
        "modal",
        "webhook",
        "postgres",
        "metrics",
        "serve",
        "all",
    }


def test_the_sdist_holds_the_app_and_its_documents(dist: Path) -> None:
    [sdist] = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        top = {Path(name).parts[1] for name in archive.getnames() if len(Path(name).parts) > 1}
    assert top == {
        "modalkit_django",
        "README.md",
        "CHANGELOG.md",
        "LICENSE",
        "pyproject.toml",
        "PKG-INFO",
        ".gitignore",
    }


def readme_blocks() -> dict[tuple[str, str], str]:
    """The README's code blocks marked ``<!-- host-project: PATH append|write -->``."""
    readme = (ROOT / "README.md").read_text()
    marked = re.finditer(r"<!-- host-project: (\S+) (append|write) -->\n```\w*\n(.*?)```", readme, re.S)
    return {(match[1], match[2]): match[3] for match in marked}


@pytest.fixture(scope="module")
def host_project(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A new project, on the built wheel (no extras), made as the README says."""
    home = tmp_path_factory.mktemp("host")
    venv = home / "venv"
    run(UV, "venv", "--python", sys.executable, venv)
    [wheel] = dist.glob("*.whl")
    # The wheel's own dependency ranges, resolved by uv; Django pinned to this row's.
    run(UV, "pip", "install", "--python", venv / "bin" / "python", wheel, f"Django=={django.__version__}")
    project = home / "project"
    project.mkdir()
    run(venv / "bin" / "django-admin", "startproject", "mysite", project)
    blocks = readme_blocks()
    assert set(blocks) == {
        ("mysite/settings.py", "append"),
        ("mysite/urls.py", "write"),
        ("modalkit.yaml", "write"),
        ("shop/pipelines.py", "write"),
        ("mysite/wsgi.py", "append"),
    }
    for (path, how), text in blocks.items():
        target = project / path
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.parent / "__init__.py").touch() if path.endswith(".py") else None
        with target.open("a" if how == "append" else "w") as file:
            file.write("\n" + text if how == "append" else text)
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "MODALKIT_"))},
        "DJANGO_SUPERUSER_PASSWORD": "pw-for-the-test",
    }
    yield {"python": venv / "bin" / "python", "project": project, "env": env}
    shutil.rmtree(home, ignore_errors=True)


def manage(host: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(host["python"]), "manage.py", *args],
        cwd=host["project"],
        env=host["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_new_project_made_from_the_readme_runs_a_job(host_project: dict[str, Any]) -> None:
    for command in (
        ("migrate", "--noinput"),
        ("check",),
        ("createsuperuser", "--noinput", "--username", "ada", "--email", "a@example.com"),
    ):
        result = manage(host_project, *command)
        assert result.returncode == 0, result.stderr
    key_line = manage(host_project, "modalkit_api_key", "ada").stdout.strip()
    assert key_line.startswith("API key: mk_")
    port = free_port()
    server = subprocess.Popen(
        [str(host_project["python"]), "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=host_project["project"],
        env=host_project["env"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    headers = {"Authorization": f"Bearer {key_line.removeprefix('API key: ')}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as api:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if api.get("/api/openapi.json").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the host project's server did not start"
                time.sleep(0.1)
            schema = api.get("/api/openapi.json").json()
            assert "SentimentRequest" in schema["components"]["schemas"]  # typed by the host's pipeline
            accepted = api.post("/api/async/predict", json={"message": {"text": "I love it"}})
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job_id"]

            def finished() -> dict[str, Any] | None:
                body: dict[str, Any] = api.get(f"/api/jobs/{job_id}").json()
                return body if body["status"] == "succeeded" else None

            job = wait_until(finished, timeout=30, what="the host project's job")
            assert job["result"]["sentiment"] == "positive"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_choosing_a_backend_whose_extra_is_missing_names_the_extra(host_project: dict[str, Any]) -> None:
    settings = host_project["project"] / "mysite" / "settings.py"
    original = settings.read_text()
    settings.write_text(
        original + '\nMODALKIT["QUEUES"]["sqs"] = {"BACKEND": "modalkit_django.queues.sqs.SQSBackend"}\n'
    )
    try:
        result = manage(host_project, "check")
    finally:
        settings.write_text(original)
    assert result.returncode == 1
    assert "modalkit_django.E011" in result.stderr
    assert 'pip install "modalkit-django[sqs]"' in result.stderr
    assert "Traceback" not in result.stderr
