"""``manage.py modalkit``: every subcommand, as text and as JSON, with and without --dry-run."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
import uuid
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from modalkit_django import cli
from modalkit_django.cli import ProgressReporter
from modalkit_django.cli.arguments import format_age, parse_duration
from modalkit_django.cli.reports import ERROR_WIDTH
from modalkit_django.exceptions import PermanentDeliveryError, PipelineError
from modalkit_django.jobs.keys import create_api_key
from modalkit_django.jobs.stats import job_stats
from modalkit_django.models import ApiKey, Job, QueueDelivery, SendResult

from . import flow
from .conftest import ROOT
from .flow import OUTPUT

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("modalkit", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def run_json(*args: str) -> Any:
    return json.loads(run(*args, "--json")[0])


def aged(job: Job, *, minutes: float, **fields: Any) -> Job:
    """Move ``job``'s timestamps ``minutes`` into the past."""
    then = timezone.now() - dt.timedelta(minutes=minutes)
    updates = {"created_at": then, "queued_at": then, **fields}
    if job.finished_at:
        updates["finished_at"] = then
    Job.objects.filter(id=job.id).update(**updates)
    job.refresh_from_db()
    return job


def succeeded(**submit: Any) -> Job:
    job = flow.claim_one(flow.submit(**submit))
    flow.finish([(job, OUTPUT)])
    return Job.objects.get(id=job.id)


def failed() -> Job:
    job = flow.claim_one(flow.submit())
    flow.finish([(job, PipelineError("boom"))])
    return Job.objects.get(id=job.id)


def on_a_modal_call(job: Job) -> Job:
    """A running job whose Modal call is known, as a worker with detached calls leaves it."""
    Job.objects.filter(id=job.id).update(modal_call_id="fc-1")
    return Job.objects.get(id=job.id)


def snapshot() -> tuple[list[Any], list[Any]]:
    jobs = list(Job.objects.order_by("id").values_list("id", "status", "reruns", "finished_at", "queued_at"))
    deliveries = list(QueueDelivery.objects.order_by("id").values_list("id", "status", "attempts", "next_attempt_at"))
    return jobs, deliveries


@pytest.fixture
def states() -> dict[str, Job]:
    """One job in each state, a running one with a Modal call, and one of another model."""
    return {
        "queued": flow.submit(),
        "running": flow.claim_one(flow.submit()),
        "on_modal": on_a_modal_call(flow.claim_one(flow.submit())),
        "succeeded": succeeded(),
        "failed": failed(),
        "other_model": aged(flow.submit(), minutes=0, model_name="other"),
    }


# --- Durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("1w", 604800), ("0.5h", 1800)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1", "h", "1x", "1h 30m", "-1h"])
def test_durations_need_units(text: str) -> None:
    with pytest.raises(CommandError, match="not a duration"):
        run("purge", f"--older-than={text}")


def test_ages_read_as_two_units() -> None:
    assert [format_age(s) for s in (0, 42, 312.4, 7200, 90061)] == ["0s", "42s", "5m 12s", "2h", "1d 1h"]


# --- health -----------------------------------------------------------------------------


def test_health_passes_with_everything_up() -> None:
    out, _ = run("health")
    lines = out.splitlines()
    assert lines[-1] == "Ready."
    assert any(line.startswith("database") and " ok " in line for line in lines)
    assert any(line.startswith("migrations") and line.endswith("all applied") for line in lines)
    body = run_json("health")
    assert body["status"] == "ok"
    assert body["checks"]["broker"]["detail"] == "in-process"


def test_health_with_a_broken_broker_is_degraded_and_strict_fails() -> None:
    with flow.with_modalkit(BROKER={"URL": "redis://127.0.0.1:1/0"}):
        out, _ = run("health", "--timeout", "1")
        lines = out.splitlines()
        assert lines[-1] == "Ready, degraded: broker failed."
        assert any(line.startswith("broker") and " degraded " in line for line in lines)
        with pytest.raises(CommandError) as raised:
            run("health", "--timeout", "1", "--strict")
        assert raised.value.returncode == 1
        assert str(raised.value) == "Ready, degraded: broker failed"

        out = io.StringIO()
        call_command("modalkit", "health", "--json", stdout=out)
    body = json.loads(out.getvalue())
    assert (body["status"], body["checks"]["broker"]["status"]) == ("degraded", "error")


def test_health_fails_with_a_configuration_error() -> None:
    with flow.with_modalkit(PIPELINE="project.nowhere.Pipeline"), pytest.raises(CommandError) as raised:
        run("health")
    assert raised.value.returncode == 1
    assert str(raised.value) == "Not ready: configuration failed"


@pytest.fixture
def empty_database() -> Any:
    """A database on the test server with no table at all: `migrate` never ran on it."""
    import psycopg

    name = f"{connection.settings_dict['NAME']}_empty_{uuid.uuid4().hex[:6]}"
    server = {key: connection.settings_dict[key] for key in ("HOST", "PORT", "USER", "PASSWORD")}
    params = {"host": server["HOST"], "port": server["PORT"], "user": server["USER"], "password": server["PASSWORD"]}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_health_exit_status_from_the_shell(empty_database: str) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "MODALKIT_TEST_DATABASE_NAME": empty_database,
        "MODALKIT_TEST_BROKER_URL": "redis://127.0.0.1:1/0",
        "MODALKIT_TEST_PIPELINE": "project.nowhere.Pipeline",
    }
    # The broker's port refuses at once; the timeout only has to let a loaded machine's
    # database answer (1 s did not, once, beside the other test row). No --skip-checks: a
    # check error is reported as one of health's checks, in its JSON, not before it.
    result = subprocess.run(
        [sys.executable, "manage.py", "modalkit", "health", "--json", "--timeout", "10"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    checks = json.loads(result.stdout)["checks"]
    assert checks["broker"]["status"] == "error"
    assert re.fullmatch(
        r"\d+ migrations not applied \(contenttypes\.0001_initial, .+ more\): run `manage\.py migrate`",
        checks["migrations"]["error"],
    )
    assert checks["configuration"]["error"].startswith("modalkit_django.E003: cannot import MODALKIT['PIPELINE']")
    # Not ready for want of migrations and configuration; the broker only degrades it.
    assert result.stderr == "CommandError: Not ready: migrations, configuration failed\n"


# --- stats ------------------------------------------------------------------------------


def test_stats_counts_by_model_and_status(states: dict[str, Job], django_assert_num_queries: Any) -> None:
    aged(states["queued"], minutes=10)
    dead = flow.pending_delivery()
    flow.record([SendResult(dead, error=PermanentDeliveryError("no"))])
    with django_assert_num_queries(2):
        job_stats()
    body = run_json("stats")
    assert body["jobs"]["by_model"] == {
        "sentiment": {"queued": 1, "running": 2, "succeeded": 2, "failed": 1},
        "other": {"queued": 1},
    }
    assert body["jobs"]["by_status"]["queued"] == 2
    assert body["jobs"]["by_status"]["expired"] == 0
    assert body["oldest_queued"]["model"] == "sentiment"
    assert 600 <= body["oldest_queued"]["age_seconds"] < 660
    assert body["deliveries"]["by_status"]["dead"] == 1
    assert body["deliveries"]["by_backend"]["memory"]["dead"] == 1

    out, _ = run("stats")
    assert "Oldest queued job: 10m" in out
    [sentiment_row] = [line for line in out.splitlines() if line.startswith("sentiment")]
    assert sentiment_row.split()[1:] == ["1", "2", "2", "1", "0", "0", "6"]


def test_stats_with_nothing_queued() -> None:
    assert "Oldest queued job: none queued" in run("stats")[0]
    assert run_json("stats")["oldest_queued"]["age_seconds"] is None


# --- jobs -------------------------------------------------------------------------------


def test_jobs_lists_newest_first_with_filters(states: dict[str, Job]) -> None:
    aged(states["queued"], minutes=5)
    listed = run_json("jobs")["jobs"]
    assert len(listed) == len(states)
    created = [row["created_at"] for row in listed]
    assert created == sorted(created, reverse=True)
    assert listed[-1]["id"] == str(states["queued"].id)

    assert [row["id"] for row in run_json("jobs", "--status", "failed")["jobs"]] == [str(states["failed"].id)]
    assert run_json("jobs", "--status", "failed")["jobs"][0]["error_type"] == "PipelineError"
    assert [row["id"] for row in run_json("jobs", "--model", "other")["jobs"]] == [str(states["other_model"].id)]
    assert len(run_json("jobs", "--status", "running")["jobs"]) == 2
    assert len(run_json("jobs", "--limit", "2")["jobs"]) == 2
    assert [row["id"] for row in run_json("jobs", "--older-than", "1m")["jobs"]] == [str(states["queued"].id)]

    out, _ = run("jobs", "--status", "failed")
    assert out.splitlines()[0].startswith("ID")
    assert str(states["failed"].id) in out and "PipelineError: boom" in out
    assert run_json("jobs", "--status", "failed")["jobs"][0]["error_message"] == "boom"
    assert run("jobs", "--status", "expired")[0] == "No jobs.\n"


def test_jobs_show_the_error_message_on_one_line_without_secrets() -> None:
    job = flow.claim_one(flow.submit())
    long = "POST https://hooks.example.com/x?token=s3cret answered 500\n" + "x" * 200
    flow.finish([(job, PipelineError(long))])
    out, _ = run("jobs", "--status", "failed")
    [line] = out.splitlines()[1:]
    error = line.partition("  PipelineError: ")[2]
    assert error.startswith("POST https://hooks.example.com/x?token=*** answered 500 xxx")
    assert len(error) == ERROR_WIDTH and error.endswith("…")
    assert "s3cret" not in run_json("jobs")["jobs"][0]["error_message"]


# --- grant ------------------------------------------------------------------------------


def test_grant_adds_and_takes_back_queues_of_an_existing_key(user: Any) -> None:
    api_key, raw_key = create_api_key(owner=user, name="laptop", allowed_queues=["audit"])
    out, _ = run("grant", api_key.prefix, "--allow-queue", "acme-*", "--allow-queue", "audit")
    assert out == f"Key 'laptop' ({api_key.prefix}…) of alice may send results to: audit, acme-*.\n"
    api_key.refresh_from_db()
    assert api_key.allowed_queues == ["audit", "acme-*"]

    body = run_json("grant", raw_key, "--remove-queue", "audit")  # the whole key names it too
    assert body == {
        "prefix": api_key.prefix,
        "name": "laptop",
        "owner": "alice",
        "revoked": False,
        "allowed_queues": ["acme-*"],
    }
    assert run("grant", api_key.prefix)[0].endswith("may send results to: acme-*.\n")  # only shows


def test_grant_names_one_key(user: Any) -> None:
    with pytest.raises(CommandError, match="No API key 'mk_nope00'"):
        run("grant", "mk_nope00", "--allow-queue", "x")
    first, _ = create_api_key(owner=user, name="a")
    second, _ = create_api_key(owner=user, name="b")
    ApiKey.objects.filter(pk=second.pk).update(prefix=first.prefix)
    with pytest.raises(CommandError, match="2 keys start with"):
        run("grant", first.prefix, "--allow-queue", "x")


# --- cancel and retry -------------------------------------------------------------------


def test_cancel_by_id(states: dict[str, Job], django_capture_on_commit_callbacks: Any) -> None:
    nowhere = str(uuid.uuid4())
    with django_capture_on_commit_callbacks():
        body = run_json("cancel", str(states["queued"].id), str(states["succeeded"].id), nowhere)
    assert body == {
        "action": "cancel",
        "dry_run": False,
        "changed": 1,
        "left_alone": {"succeeded": 1},
        "not_found": [nowhere],
    }
    states["queued"].refresh_from_db()
    assert states["queued"].status == "canceled"
    assert Job.objects.get(id=states["other_model"].id).status == "queued"


def test_cancel_by_filter(states: dict[str, Job]) -> None:
    out, _ = run("cancel", "--status", "queued", "--model", "other")
    assert out == "Canceled 1 job; left alone: none.\n"
    assert Job.objects.get(id=states["other_model"].id).status == "canceled"
    assert Job.objects.get(id=states["queued"].id).status == "queued"


def test_actions_refuse_to_select_everything_by_default() -> None:
    for subcommand in ("cancel", "retry", "redeliver"):
        with pytest.raises(CommandError, match="Name"):
            run(subcommand)
    with pytest.raises(CommandError, match="Not an id: 'nope'"):
        run("cancel", "nope")


@pytest.mark.parametrize("subcommand", ["cancel", "retry"])
def test_dry_run_counts_what_the_action_then_does(
    states: dict[str, Job], subcommand: str, django_capture_on_commit_callbacks: Any
) -> None:
    selection = ["--status", "queued", "--status", "running", "--status", "succeeded", "--status", "failed"]
    before = snapshot()
    with django_capture_on_commit_callbacks() as callbacks:
        planned = run_json(subcommand, *selection, "--dry-run")
        text, _ = run(subcommand, *selection, "--dry-run")
    assert snapshot() == before
    assert callbacks == []
    assert planned["selected"] == {"queued": 2, "running": 2, "succeeded": 1, "failed": 1}
    # cancel: the queued ones and the one running on a Modal call; retry: the finished ones.
    assert planned["would_change"] == (3 if subcommand == "cancel" else 2)
    assert "Dry run: nothing was changed." in text

    done = run_json(subcommand, *selection)
    assert done["changed"] == planned["would_change"]
    assert sum(done["left_alone"].values()) + done["changed"] == sum(planned["selected"].values())


def test_retry_reruns_finished_jobs(states: dict[str, Job], django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        out, _ = run("retry", str(states["failed"].id))
    assert out == "Re-ran 1 job; left alone: none.\n"
    rerun = Job.objects.get(id=states["failed"].id)
    assert (rerun.status, rerun.reruns) == ("queued", 1)
    assert len(callbacks) == 1  # a worker is woken


# --- redeliver --------------------------------------------------------------------------


def test_redeliver_by_status_id_and_job(django_capture_on_commit_callbacks: Any) -> None:
    dead = flow.pending_delivery()
    flow.record([SendResult(dead, error=PermanentDeliveryError("no"))])
    sent = flow.pending_delivery()
    flow.record([SendResult(sent, external_id="x")])

    before = snapshot()
    planned = run_json("redeliver", "--status", "dead", "--dry-run")
    assert snapshot() == before
    assert (planned["selected"], planned["would_change"]) == ({"dead": 1}, 1)

    with django_capture_on_commit_callbacks() as callbacks:
        body = run_json("redeliver", "--status", "dead")
    assert body["changed"] == 1 and len(callbacks) == 1
    assert QueueDelivery.objects.get(id=dead.id).status == "pending"
    assert QueueDelivery.objects.get(id=sent.id).status == "sent"

    nowhere = str(uuid.uuid4())
    assert run_json("redeliver", str(sent.id), nowhere)["not_found"] == [nowhere]
    assert QueueDelivery.objects.get(id=sent.id).status == "pending"
    flow.record([SendResult(QueueDelivery.objects.get(id=sent.id), external_id="y")])
    out, _ = run("redeliver", "--job", str(sent.job_id))
    assert out == "Redelivering 1 delivery.\n"


def test_redeliver_by_model_and_age() -> None:
    old = flow.pending_delivery()
    QueueDelivery.objects.filter(id=old.id).update(created_at=timezone.now() - dt.timedelta(hours=2))
    other = flow.pending_delivery()
    Job.objects.filter(id=other.job_id).update(model_name="other")
    assert run_json("redeliver", "--older-than", "1h", "--dry-run")["selected"] == {"pending": 1}
    assert run_json("redeliver", "--model", "other", "--dry-run")["selected"] == {"pending": 1}
    assert run_json("redeliver", "--model", "other", "--older-than", "1h", "--dry-run")["selected"] == {}


# --- purge ------------------------------------------------------------------------------


def test_purge_deletes_old_finished_jobs_whose_results_went_out(states: dict[str, Job]) -> None:
    old_done = [aged(succeeded(), minutes=120) for _ in range(5)]
    undelivered = aged(Job.objects.get(id=flow.pending_delivery().job_id), minutes=120)
    old_queued = aged(flow.submit(), minutes=120)
    recent_done = states["succeeded"]

    before = snapshot()
    planned = run_json("purge", "--older-than", "1h", "--dry-run")
    assert snapshot() == before
    assert (planned["selected"], planned["would_change"]) == ({"succeeded": 5}, 5)

    out, err = run("purge", "--older-than", "1h", "--batch-size", "2")
    assert out.startswith("Purged 5 jobs finished before ")
    assert err.splitlines() == ["Purging jobs: 2 of 5", "Purging jobs: 4 of 5", "Purging jobs: 5 of 5"]
    assert not Job.objects.filter(id__in=[job.id for job in old_done]).exists()
    assert Job.objects.filter(id__in=[undelivered.id, old_queued.id, recent_done.id]).count() == 3


PURGE_DEFAULTS = {"older_than": dt.timedelta(hours=1), "model": None, "dry_run": False, "json": False}


def test_purge_draws_a_bar_on_a_terminal() -> None:
    for _ in range(3):
        aged(succeeded(), minutes=120)
    stream = io.StringIO()
    bar = ProgressReporter(stream, bar=True)
    outcome = cli.run("purge", {**PURGE_DEFAULTS, "batch_size": 1}, progress=bar)
    bar.close()
    assert outcome.data["changed"] == 3
    # tqdm redraws the line in place: its last state is the whole count, at 100 %.
    assert "Purging jobs: 100%" in stream.getvalue()
    assert "3/3" in stream.getvalue()


def test_purge_by_model() -> None:
    kept = aged(succeeded(), minutes=120)
    other = aged(succeeded(), minutes=120, model_name="other")
    assert run_json("purge", "--older-than", "1h", "--model", "other")["changed"] == 1
    assert list(Job.objects.values_list("id", flat=True)) == [kept.id]
    assert other.id != kept.id


def test_purge_needs_an_age() -> None:
    with pytest.raises(CommandError, match="--older-than"):
        run("purge")


# --- Every subcommand speaks JSON ---------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["health"],
        ["stats"],
        ["jobs"],
        ["cancel", "--status", "queued"],
        ["retry", "--status", "failed", "--dry-run"],
        ["redeliver", "--status", "dead"],
        ["purge", "--older-than", "1d"],
        ["grant", "<key>", "--allow-queue", "acme-*"],
    ],
    ids=lambda args: args[0],
)
def test_every_subcommand_prints_json(args: list[str], api_key: str) -> None:
    flow.submit()
    args = [api_key if arg == "<key>" else arg for arg in args]
    assert isinstance(run_json(*args), dict)
