"""The API against its own OpenAPI schema: schemathesis sends generated requests, valid and
invalid, to every operation, and every answer must be one the schema documents.

A fixed seed makes every run send the same requests. ``make fuzz`` (``bench/fuzz.py``)
runs the same loop at length against uvicorn, importing it from here.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup, ServerError
from schemathesis.openapi.checks import UndefinedStatusCode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import modalkit_django
from modalkit_django.asgi import ApiHandler
from modalkit_django.exceptions import PipelineError
from modalkit_django.models import SendResult

from . import flow

pytestmark = pytest.mark.django_db(transaction=True)

SCHEMA_PATH = "/api/openapi.json"
SEED = 20_260_101
# Every operation, with valid and invalid data and a wrong key: about 25 s on two cores
# (300 took 75 s, the suite's slowest test by five times; make fuzz runs 10,000 and more).
CASES = 150
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Reproductions point at `make run`'s address, with the caller's key left to fill in.
REPRODUCE_AT = "http://127.0.0.1:8000"
REPRODUCE_HEADERS = {"Authorization": "Bearer $API_KEY"}
# A share of each operation's cases goes with a key nobody has: every one must be a documented 401.
WRONG_KEY_SHARE = 0.2
WRONG_KEY = {"Authorization": "Bearer mk_not-a-key"}


@dataclass
class Finding:
    """One kind of failure on one operation and status, with the shortest request that caused it."""

    category: str  # "5xx", "undocumented status", "schema violation" or "no answer"
    operation: str
    status: int
    message: str
    reproduction: str
    count: int = 0


@dataclass
class Report:
    """Every answer of a run, tallied: statuses by operation, and the failures found."""

    cases: int = 0
    unsent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    findings: dict[tuple[str, ...], Finding] = field(default_factory=dict)
    job_ids: dict[str, None] = field(default_factory=dict)  # ordered: the run stays deterministic
    batch_ids: dict[str, None] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def record(self, case: Any, status: int, failures: list[Failure], body: Any = None) -> None:
        self.cases += 1
        self.statuses[case.operation.label, status] += 1
        self._harvest(body)
        for failure in failures:
            category = (
                "5xx"
                if isinstance(failure, ServerError)
                else "undocumented status"
                if isinstance(failure, UndefinedStatusCode)
                else "schema violation"
            )
            # Two wrong fields of one response are two findings: told apart by where they fail.
            where = "/".join(map(str, getattr(failure, "schema_path", ())))
            self._add(category, case, status, failure.message.strip(), failure.title, where)

    def no_answer(self, case: Any, error: Exception) -> None:
        """The server closed the connection or never answered: worse than a 5xx."""
        self.cases += 1
        self._add("no answer", case, 0, f"{type(error).__name__}: {error}", type(error).__name__)

    def _add(self, category: str, case: Any, status: int, message: str, *key: str) -> None:
        label = case.operation.label
        reproduction = case.as_curl_command(headers=REPRODUCE_HEADERS, base_url=REPRODUCE_AT)
        found = self.findings.get((category, label, str(status), *key))
        if found is None or len(reproduction) < len(found.reproduction):
            count = found.count if found else 0
            found = Finding(category, label, status, message, reproduction, count)
            self.findings[category, label, str(status), *key] = found
        found.count += 1

    def _harvest(self, body: Any) -> None:
        """Remember the caller's job and batch ids, to ask about real ones and not only made-up ones."""
        if isinstance(body, dict):
            if isinstance(body.get("batch_id"), str):
                self.batch_ids[body["batch_id"]] = None
            for job in [body, *(body.get("jobs") or [])]:
                if isinstance(job, dict) and isinstance(job.get("job_id"), str):
                    self.job_ids[job["job_id"]] = None

    def of(self, category: str) -> list[Finding]:
        return [found for found in self.findings.values() if found.category == category]

    def summary(self) -> str:
        undocumented = ", ".join(f"{f.operation} {f.status} ({f.count})" for f in self.of("undocumented status"))
        violations = self.of("schema violation")
        rows = {
            "cases run": f"{self.cases} (and {sum(self.unsent.values())} the client refused to send)",
            "5xx answers": sum(n for (_, status), n in self.statuses.items() if status >= 500),
            "no answer": sum(f.count for f in self.of("no answer")),
            "undocumented statuses": undocumented or "none",
            "schema violations": f"{sum(f.count for f in violations)} in {len(violations)} distinct findings",
            "elapsed": f"{time.monotonic() - self.started:.1f} s",
        }
        return "\n".join(f"{name + ':':24} {value}" for name, value in rows.items())

    def render(self) -> str:
        lines = [self.summary(), "statuses by operation:"]
        for operation in sorted({op for op, _ in self.statuses}):
            counts = ", ".join(f"{s}: {n}" for (op, s), n in sorted(self.statuses.items()) if op == operation)
            lines.append(f"  {operation}  {counts}")
        for f in sorted(self.findings.values(), key=lambda f: (f.category, f.operation, f.status)):
            lines.append(f"\n[{f.category}] {f.operation} -> {f.status} ({f.count} cases)")
            lines.append("  " + f.message.replace("\n", "\n  "))
            lines.append(f"  reproduce: {f.reproduction}")
        return "\n".join(lines)


def fuzz(
    schema: Any,
    *,
    cases: int,
    seed_value: int,
    headers: Mapping[str, str],
    report: Report,
    send: Callable[[Any, dict[str, str]], Any] | None = None,
) -> Report:
    """Send at least ``cases`` generated requests, shared out over every operation, valid and
    invalid data and a wrong key, and tally each answer against the schema in ``report``.

    Failures are recorded, not raised, so that one run lists them all, not the first.
    """
    # Reproductions show the headers as sent (the key is replaced by REPRODUCE_HEADERS).
    schema.config.output.sanitization.enabled = False
    operations = [result.ok() for result in schema.get_all_operations()]
    # Operations without a job or batch id first: their answers give the others real ids to ask about.
    operations.sort(key=lambda operation: "{job_id}" in operation.path or "{batch_id}" in operation.path)
    call = send or (lambda case, sent: case.call(headers=sent))
    target = report.cases + cases
    # Hypothesis stops early where an operation leaves little to vary: top up with the next seed.
    for attempt in range(3):
        remaining = target - report.cases
        if remaining <= 0:
            break
        per_run = math.ceil(remaining / (len(operations) * (len(GenerationMode) + WRONG_KEY_SHARE)))
        for operation in operations:
            for mode in GenerationMode:
                known = {"job_id": list(report.job_ids), "batch_id": list(report.batch_ids)}
                strategy = _strategy(operation, mode, known)
                _run(strategy, per_run, seed_value + attempt, call, dict(headers), report)
            wrong_key = math.ceil(per_run * WRONG_KEY_SHARE)
            _run(operation.as_strategy(), wrong_key, seed_value + attempt, call, WRONG_KEY, report)
    return report


def _strategy(operation: Any, mode: GenerationMode, known_ids: dict[str, list[str]]) -> st.SearchStrategy[Any]:
    generated = operation.as_strategy(generation_mode=mode)
    name = next((name for name, ids in known_ids.items() if ids and f"{{{name}}}" in operation.path), None)
    if not (mode.is_positive and name):
        return generated
    known = st.sampled_from(known_ids[name]).flatmap(lambda value: operation.as_strategy(path_parameters={name: value}))
    return st.one_of(generated, known)


def _run(
    strategy: st.SearchStrategy[Any],
    examples: int,
    seed_value: int,
    call: Callable[[Any, dict[str, str]], Any],
    headers: dict[str, str],
    report: Report,
) -> None:
    @seed(seed_value)
    # Recorded, not raised: nothing to shrink. No example database: no run depends on the last.
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        try:
            response = call(case, headers)
        except (requests.ConnectionError, requests.Timeout) as exc:
            report.no_answer(case, exc)
            return
        except (ValueError, UnicodeError) as exc:
            # requests refuses some generated headers before anything is sent.
            report.unsent[type(exc).__name__] += 1
            return
        failures: list[Failure] = []
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            failures = list(group.exceptions)
        except Failure as failure:
            failures = [failure]
        try:
            body = response.json()
        except ValueError:
            body = None
        report.record(case, response.status_code, failures, body)

    run()


def seed_jobs(owner: Any) -> list[str]:
    """Jobs of ``owner`` queued, running, succeeded, failed and canceled, with deliveries
    pending, sent and retrying, so that real jobs' answers are checked against the schema too
    (expired jobs and dead deliveries take the sweeper and time: not seeded)."""
    queued = flow.submit(owner=owner, success_queue="q", meta={"request_id": "r-1", "tags": ["a"]})
    running = flow.claim_one(flow.submit(owner=owner))
    sent_job, pending_job = flow.claim([flow.submit(owner=owner, success_queue="q").id for _ in range(2)])
    sent, _ = flow.finish([(sent_job, flow.OUTPUT), (pending_job, flow.OUTPUT)])
    failed = flow.claim_one(flow.submit(owner=owner, failure_queue="errors"))
    [retrying] = flow.finish([(failed, PipelineError("boom", error_type="ValueError"))])
    flow.record([SendResult(sent, external_id="m-1"), SendResult(retrying, error=RuntimeError("queue down"))])
    canceled = modalkit_django.cancel_job(job=flow.submit(owner=owner, failure_queue="errors"))
    return [str(job.id) for job in (queued, running, sent_job, pending_job, failed, canceled)]


@pytest.mark.usefixtures("recording_waker")  # wake-ups are recorded, never sent
def test_every_answer_is_documented(api_key: str, user: Any) -> None:
    # The API's lean ASGI path, as project.asgi serves /api/ (get_asgi_application would
    # also gc.freeze() the test process). Its database work runs on threads of its own:
    # the key and the jobs must be committed, hence transaction=True.
    schema = schemathesis.openapi.from_asgi(SCHEMA_PATH, ApiHandler())
    report = Report(job_ids=dict.fromkeys(seed_jobs(user)))
    fuzz(schema, cases=CASES, seed_value=SEED, headers={"Authorization": f"Bearer {api_key}"}, report=report)
    print(report.render())

    operations = {result.ok().label for result in schema.get_all_operations()}
    assert {op for op, _ in report.statuses} == operations, "every operation was called"
    assert {op for op, status in report.statuses if status < 300} == operations, "every operation succeeded once"
    assert report.cases >= CASES
    assert not report.findings, report.render()
