"""The package as users get it: the wheel and sdist, and a fresh project built from the docs.

The host-project test is the docs, executed as a new user would follow them: a new
virtualenv gets the built wheel, ``django-admin startproject`` makes a project, and the
blocks the docs mark ``<!-- host-project: PATH append|write -->`` are written into it,
nothing else but what a test of a real project adds (``ATOMIC_REQUESTS``, a view and a
``NinjaAPI`` of the host's own under ``/api/``). First the README's five minutes (SQLite,
the in-process broker, ``runserver``), its ``curl`` requests run as written; then the
production recipe of the deploy and metrics guides (PostgreSQL, a Redis broker, the
Procfile's release, web and worker lines as written): readiness before the release step
(503, naming ``migrate``) and with Redis down (200, degraded), the worker's one line per
process while Redis is down, and a client generated from the served schema whose job's
result waits for Redis to come back. It runs on whatever Python and Django the suite runs on, so each CI row
checks its own.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path
from typing import Any

import django
import httpx
import psycopg
import pytest
from django.conf import settings
from packaging.requirements import Requirement

from modalkit_django import __version__

from .conftest import ROOT, wait_until
from .private_services import PrivateRedis, free_port

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
        "rabbitmq",
        "nats",
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


def test_pip_wheel_as_the_readme_says_writes_our_wheel_only(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    [command] = re.findall(r"^(pip wheel [^#\n]*?)\s+#", readme, re.M)
    args = shlex.split(command.replace("/path/to/checkout", str(ROOT)).replace("dist", str(tmp_path / "dist")))
    run(sys.executable, "-m", *args)
    assert [path.name for path in (tmp_path / "dist").iterdir()] == [f"modalkit_django-{__version__}-py3-none-any.whl"]


# --- The host project ----------------------------------------------------------------------

# What the test adds to the project, as a real project's own lines: ATOMIC_REQUESTS on
# every database, and a view and a NinjaAPI of the host's own beside the API under /api/.
HOST_SETTINGS = """
for _alias in DATABASES:
    DATABASES[_alias]["ATOMIC_REQUESTS"] = True
"""
HOST_VIEWS = """
from django.http import JsonResponse
from ninja import NinjaAPI

v1 = NinjaAPI(urls_namespace="host-v1")


@v1.get("/whoami")
def whoami(request):
    return {"user": str(request.user)}


def hello(request):
    return JsonResponse({"user": str(request.user)})
"""
HOST_URLS = """
from mysite.hostviews import hello, v1  # noqa: E402

urlpatterns += [path("api/hello", hello), path("api/v1/", v1.urls)]
"""


def marked_blocks(document: Path) -> list[tuple[str, str, str]]:
    """The code blocks of ``document`` marked ``<!-- host-project: PATH append|write -->``, in order."""
    marked = re.finditer(r"<!-- host-project: (\S+) (append|write) -->\n```\w*\n(.*?)```", document.read_text(), re.S)
    return [(match[1], match[2], match[3]) for match in marked]


def readme_requests() -> list[str]:
    """The README's marked ``curl`` commands, each on one line."""
    readme = (ROOT / "README.md").read_text()
    [block] = re.findall(r"<!-- host-project: requests -->\n```sh\n(.*?)```", readme, re.S)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.startswith("curl")]


def write_blocks(project: Path, blocks: list[tuple[str, str, str]]) -> None:
    for path, how, text in blocks:
        target = project / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".py"):
            (target.parent / "__init__.py").touch()
        with target.open("a" if how == "append" else "w") as file:
            file.write("\n" + text if how == "append" else text)


@pytest.fixture(scope="module")
def host_project(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A new project on the built wheel, made as the README's five minutes say."""
    home = tmp_path_factory.mktemp("host")
    venv = home / "venv"
    run(UV, "venv", "--python", sys.executable, venv)
    [wheel] = dist.glob("*.whl")
    # The wheel's own dependency ranges, resolved by uv; Django pinned to this row's. The
    # extras and dj-database-url are the deploy guide's, for the production half.
    run(
        UV, "pip", "install", "--python", venv / "bin" / "python",
        f"{wheel}[postgres,redis,serve,metrics]", "dj-database-url", f"Django=={django.__version__}",
    )  # fmt: skip
    project = home / "project"
    project.mkdir()
    run(venv / "bin" / "django-admin", "startproject", "mysite", project)
    blocks = marked_blocks(ROOT / "README.md")
    # The wiring, counted: two edits of startproject's files (the app and its settings;
    # one URL line) and the model's config (modalkit.yaml, the pipeline); then migrate and
    # the worker, which with the in-process broker is the web process. Nothing in
    # wsgi.py or asgi.py.
    assert [(path, how) for path, how, _ in blocks] == [
        ("mysite/settings.py", "append"),
        ("mysite/urls.py", "write"),
        ("modalkit.yaml", "write"),
        ("shop/pipelines.py", "write"),
    ]
    urls = blocks[1][2]
    assert [line.strip() for line in urls.splitlines() if line.strip().startswith("path(")] == [
        'path("admin/", admin.site.urls),',
        'path("", include("modalkit_django.urls")),',
    ]
    write_blocks(project, blocks)
    write_blocks(
        project,
        [
            ("mysite/settings.py", "append", HOST_SETTINGS),
            ("mysite/hostviews.py", "write", HOST_VIEWS),
            ("mysite/urls.py", "append", HOST_URLS),
        ],
    )
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "MODALKIT_"))},
        "DJANGO_SUPERUSER_PASSWORD": "pw-for-the-test",
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
    }
    yield {"python": venv / "bin" / "python", "project": project, "env": env}
    shutil.rmtree(home, ignore_errors=True)


def manage(host: dict[str, Any], *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(host["python"]), "manage.py", *args],
        cwd=host["project"],
        env=env or host["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )


class Processes:
    """Processes of the host project, each in a session of its own, stopped together."""

    def __init__(self, host: dict[str, Any], env: dict[str, str]) -> None:
        self.host, self.env = host, env
        self.started: list[subprocess.Popen[bytes]] = []
        self.log = (host["project"] / "processes.log").open("ab")

    def start(self, command: str) -> None:
        self.started.append(
            subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.host["project"],
                env=self.env,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def output(self) -> str:
        self.log.flush()
        return (self.host["project"] / "processes.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        for process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.log.close()


def wait_for_server(client: httpx.Client, processes: Processes) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the host project's server did not start:\n{processes.output()}"
        time.sleep(0.2)


def assert_the_hosts_views_keep_their_middleware(client: httpx.Client) -> None:
    hello = client.get("/api/hello")
    assert (hello.status_code, hello.json()) == (200, {"user": "AnonymousUser"})
    assert hello.headers["X-Frame-Options"] == "DENY"
    assert client.post("/api/hello").status_code == 403  # CSRF, enforced
    whoami = client.get("/api/v1/whoami")
    assert (whoami.status_code, whoami.json()) == (200, {"user": "AnonymousUser"})


def test_a_new_project_made_from_the_readme_runs_jobs(host_project: dict[str, Any]) -> None:
    for command in (
        ("migrate", "--noinput"),
        ("check", "--fail-level", "WARNING"),
        ("createsuperuser", "--noinput", "--username", "ada", "--email", "a@example.com"),
    ):
        result = manage(host_project, *command)
        assert result.returncode == 0, result.stdout + result.stderr
    key_line = manage(host_project, "modalkit_api_key", "ada", "--allow-queue", "shop-*").stdout.strip()
    assert key_line.startswith("API key: mk_")
    key = key_line.removeprefix("API key: ")
    # A job a restart left queued: the server's first request (a probe) starts the broker.
    created = manage(
        host_project,
        "shell",
        "-c",
        "from modalkit_django import Job; print(Job.objects.create(model_name='sentiment', "
        "message={'text': 'good'}).id)",
    )
    assert created.returncode == 0, created.stderr
    port = free_port()
    processes = Processes(host_project, host_project["env"])
    processes.start(f"exec python manage.py runserver 127.0.0.1:{port} --noreload")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_for_server(client, processes)
            database = host_project["project"] / "db.sqlite3"

            def ran() -> bool:
                with contextlib.closing(sqlite3.connect(database)) as connection:
                    [(status,)] = connection.execute("SELECT status FROM modalkit_django_job").fetchall()
                return bool(status == "succeeded")

            wait_until(ran, timeout=30, what="the queued job, with nothing asked but /health")

            # The README's requests, as written: the key and the port are the test's.
            def request(command: str) -> dict[str, Any]:
                answer = subprocess.run(
                    ["bash", "-c", command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")],
                    env={**host_project["env"], "KEY": key},
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert answer.returncode == 0, answer.stderr
                body: dict[str, Any] = json.loads(answer.stdout)
                return body

            submit, poll = readme_requests()
            job_id = request(submit)["job_id"]

            def finished() -> dict[str, Any] | None:
                body = request(poll.replace("3f0c…", job_id))
                sent = [delivery["status"] for delivery in body["deliveries"]] == ["sent"]
                return body if body["status"] == "succeeded" and sent else None

            job = wait_until(finished, timeout=30, what="the README's job")
            assert (job["result"]["status"], job["result"]["sentiment"]) == ("success", "positive")
            [delivery] = job["deliveries"]
            assert (delivery["queue_name"], delivery["status"]) == ("shop-results", "sent")

            schema = client.get("/api/openapi.json").json()
            assert "SentimentRequest" in schema["components"]["schemas"]  # typed by the host's pipeline
            assert client.get("/api/docs").status_code == 200
            assert client.get("/ready").headers["Content-Type"] == "application/json"
            assert_the_hosts_views_keep_their_middleware(client)
    finally:
        processes.stop()


@pytest.fixture
def host_database() -> Iterator[str]:
    """A PostgreSQL database of the host project's own."""
    base = settings.DATABASES["default"]
    name = f"modalkit_host_{uuid.uuid4().hex[:8]}"
    admin = f"postgres://{base['USER']}@{base['HOST']}:{base['PORT']}/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield f"postgres://{base['USER']}@{base['HOST']}:{base['PORT']}/{name}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def generated_client(schema: dict[str, Any], where: Path) -> Any:
    """A client generated by openapi-python-client from ``schema``, imported."""
    (where / "openapi.json").write_text(json.dumps(schema))
    generator = Path(sys.executable).parent / "openapi-python-client"
    run(
        generator, "generate", "--path", where / "openapi.json", "--meta", "none",
        "--output-path", where / "modalkit_client", "--fail-on-warning", cwd=where,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )  # fmt: skip
    sys.path.insert(0, str(where))
    try:
        return importlib.import_module("modalkit_client")
    finally:
        sys.path.remove(str(where))


def test_the_production_recipe_serves_the_same_project(
    host_project: dict[str, Any], host_database: str, tmp_path: Path
) -> None:
    blocks = [
        *marked_blocks(ROOT / "docs" / "how-to" / "deploy.md"),
        *marked_blocks(ROOT / "docs" / "how-to" / "metrics.md"),
    ]
    assert [(path, how) for path, how, _ in blocks] == [
        ("mysite/settings.py", "append"),
        ("mysite/asgi.py", "write"),
        ("Procfile", "write"),
        ("mysite/settings.py", "append"),
        ("mysite/urls.py", "append"),
    ]
    project = host_project["project"]
    originals = {
        path: (project / path).read_text() for path in ("mysite/settings.py", "mysite/urls.py", "mysite/asgi.py")
    }
    write_blocks(project, blocks)
    write_blocks(project, [("mysite/settings.py", "append", HOST_SETTINGS)])  # the new DATABASES too
    redis = PrivateRedis()  # not started yet: the broker and the results' Redis are down
    port = free_port()
    env = {
        **host_project["env"],
        "DJANGO_SECRET_KEY": "host-project-" + "s" * 50,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": host_database,
        "BROKER_URL": redis.url,
        "METRICS_TOKEN": "m" * 24,
        "PORT": str(port),
    }
    procfile = dict(line.split(": ", 1) for line in (project / "Procfile").read_text().splitlines())
    processes = Processes(host_project, env)
    try:
        # Before the release step: the server serves, and readiness says what is missing.
        early = Processes(host_project, env)
        early.start(f"exec {procfile['web']}")
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                wait_for_server(client, early)
                unmigrated = client.get("/ready")
        finally:
            early.stop()
        assert unmigrated.status_code == 503, unmigrated.text
        assert "manage.py migrate" in unmigrated.json()["checks"]["migrations"]["error"], unmigrated.text

        release = subprocess.run(
            ["bash", "-c", procfile["release"]], cwd=project, env=env, capture_output=True, text=True, timeout=180
        )
        assert release.returncode == 0, release.stdout + release.stderr
        assert manage(host_project, "check", "--fail-level", "WARNING", env=env).returncode == 0
        superuser = ("createsuperuser", "--noinput", "--username", "ada", "--email", "a@example.com")
        assert manage(host_project, *superuser, env=env).returncode == 0
        created = manage(host_project, "modalkit_api_key", "ada", "--allow-queue", "shop-*", env=env)
        assert created.stdout.startswith("API key: mk_"), created.stdout + created.stderr
        key = created.stdout.strip().removeprefix("API key: ")
        processes.start(f"exec {procfile['web']}")
        processes.start(f"exec {procfile['worker']}")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_for_server(client, processes)
            # Redis down: ready (submits wait in the database), saying the broker is degraded.
            degraded = client.get("/ready")
            assert (degraded.status_code, degraded.json()["status"]) == (200, "degraded"), degraded.text
            assert degraded.json()["checks"]["broker"]["status"] == "error", degraded.text
            # The worker said so in one line per process, and keeps running.
            said = "retrying in the background, and running the jobs"
            wait_until(lambda: processes.output().count(said) == 2, timeout=60, what=processes.output())
            # Static files, collected by the release step and served by WhiteNoise.
            stylesheet = client.get("/static/admin/css/base.css")
            assert (stylesheet.status_code, stylesheet.headers["Content-Type"]) == (200, 'text/css; charset="utf-8"')
            assert client.get("/admin/login/").status_code == 200
            assert_the_hosts_views_keep_their_middleware(client)
            metrics = client.get("/metrics", headers={"Authorization": f"Bearer {env['METRICS_TOKEN']}"})
            assert metrics.status_code == 200 and "modalkit_queue_depth" in metrics.text
            assert client.get("/metrics").status_code == 401

            # A client generated from the served schema submits a job; the worker runs it.
            schema = client.get("/api/openapi.json").json()
            generated = generated_client(schema, tmp_path)
            from modalkit_client.api.inference import get_job, submit_job
            from modalkit_client.models import AsyncPredictRequest, SentimentRequest

            with generated.AuthenticatedClient(base_url=f"http://127.0.0.1:{port}", token=key) as api:
                body = AsyncPredictRequest(message=SentimentRequest(text="I love it"), success_queue="shop-results")
                accepted = submit_job.sync(client=api, body=body)
                assert type(accepted).__name__ == "JobAccepted", accepted
                redis.start()  # the job runs from the database; its result waits for Redis

                def finished() -> Any:
                    job = get_job.sync(accepted.job_id, client=api)
                    sent = [delivery.status.value for delivery in job.deliveries] == ["sent"]
                    return job if job.status.value == "succeeded" and sent else None

                job = wait_until(finished, timeout=60, what=f"the worker's job:\n{processes.output()}")
                assert (job.result.status, job.result.sentiment) == ("success", "positive")
                assert [delivery.status.value for delivery in job.deliveries] == ["sent"]
    finally:
        processes.stop()
        redis.stop()
        for name in [name for name in sys.modules if name.startswith("modalkit_client")]:
            del sys.modules[name]
        for path, text in originals.items():
            (project / path).write_text(text)
        (project / "Procfile").unlink(missing_ok=True)


def test_choosing_a_backend_whose_extra_is_missing_names_the_extra(host_project: dict[str, Any]) -> None:
    settings_file = host_project["project"] / "mysite" / "settings.py"
    original = settings_file.read_text()
    settings_file.write_text(
        original + '\nMODALKIT["QUEUES"]["sqs"] = {"BACKEND": "modalkit_django.queues.sqs.SQSBackend"}\n'
    )
    try:
        result = manage(host_project, "check")
    finally:
        settings_file.write_text(original)
    assert result.returncode == 1
    assert "modalkit_django.E011" in result.stderr
    assert 'pip install "modalkit-django[sqs]"' in result.stderr
    assert "Traceback" not in result.stderr
