"""The API fuzzed at length: schemathesis against uvicorn, with a report of what broke.

    .venv/bin/python bench/fuzz.py --cases 10000          # make fuzz
    .venv/bin/python bench/fuzz.py --cases 500 --seed 7   # a quick look, another seed

The demo project is served as ``make serve`` serves it (uvicorn on
``project.asgi:application``, settings ``bench/serve_settings.py``: PostgreSQL and Redis),
on a database created for the run, with ``manage.py demo_setup``'s user and key and jobs
of that user in each state. No worker runs: submitted jobs stay queued, and wake-ups wait
in a Redis stream of the run's own, deleted afterwards.

The loop is tests/test_fuzz.py's, at length: generated requests, valid and invalid and with
a wrong key, to every operation of ``/api/openapi.json``, each answer checked for a 5xx,
a status the schema does not document, a body or content type it does not describe.
Prints the figures and every distinct failure with a curl command that reproduces it;
exits 1 if there was any.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.submit import prepare, serve, stop  # noqa: E402

DATABASE = os.environ.get("BENCH_FUZZ_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/modalkit_bench_fuzz")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def seed_jobs(key: str) -> list[str]:
    """The key owner's jobs in each state (tests/test_fuzz.py's), written from this process."""
    import django

    django.setup()
    from modalkit_django.jobs.keys import authenticate_api_key
    from tests.test_fuzz import seed_jobs as seed_owner_jobs

    api_key = authenticate_api_key(raw_key=key)
    assert api_key is not None, "demo_setup's key does not authenticate"
    return seed_owner_jobs(api_key.owner)


def run(args: argparse.Namespace, key: str, job_ids: list[str], env: dict[str, str]) -> Any:
    import requests
    import schemathesis

    from tests.test_fuzz import Report, fuzz

    process = serve("uvicorn", "project.urls", args.port, args.processes, env)
    try:
        schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{args.port}/api/openapi.json")
        session = requests.Session()  # keep-alive, as a real client would
        report = Report(job_ids=dict.fromkeys(job_ids))

        def send(case: Any, headers: dict[str, str]) -> Any:
            if report.cases and report.cases % 1000 == 0:  # a sign of life on a run of minutes
                print(f"{report.cases} cases, {len(report.findings)} distinct failures", file=sys.stderr, flush=True)
            return case.call(session=session, headers=headers, timeout=args.timeout)

        headers = {"Authorization": f"Bearer {key}"}
        return fuzz(schema, cases=args.cases, seed_value=args.seed, headers=headers, report=report, send=send)
    finally:
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000, help="at least this many requests")
    parser.add_argument("--seed", type=int, default=20_260_101, help="the same seed sends the same requests")
    parser.add_argument("--port", type=int, default=18_200)
    parser.add_argument("--processes", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--timeout", type=float, default=30, help="seconds to wait for an answer")
    parser.add_argument("--json", type=Path, help="also write the findings here")
    args = parser.parse_args()

    queue = f"bench-fuzz-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.serve_settings",
        "DATABASE_URL": DATABASE,
        "REDIS_URL": REDIS_URL,
        "BENCH_QUEUE": queue,
    }
    key = prepare(env, DATABASE)
    # This process writes the seeded jobs itself, on the same settings as the server.
    os.environ.update({name: env[name] for name in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "BENCH_QUEUE")})
    try:
        report = run(args, key, seed_jobs(key), env)
    finally:
        import redis

        redis.Redis.from_url(REDIS_URL).delete(queue)
    print(report.render(), flush=True)
    if args.json:
        findings = [vars(found) for found in report.findings.values()]
        args.json.write_text(json.dumps({"summary": report.summary(), "findings": findings}, indent=2))
    sys.exit(1 if report.findings else 0)


if __name__ == "__main__":
    main()
