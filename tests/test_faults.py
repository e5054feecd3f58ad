"""Faults caused for real, with the shipped timers: every accepted job ends, none is lost.

Each scenario runs the whole service as processes (web server, worker) against a
PostgreSQL and a Redis of its own (the broker's scenario: a NATS and a RabbitMQ node of
its own too), which it kills or stops and starts again; it measures
how long after the fault every accepted job reached a final state. These take minutes,
so they run in ``make faults`` (and in CI), not in ``make test``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest

from .brokers import peer
from .stack import BROKER_QUEUE, SETTLED_WITHIN, Stack, Submitter, children

pytestmark = pytest.mark.faults


def report(name: str, **figures: Any) -> None:
    print(f"\nFAULT {name}: {json.dumps(figures)}")


def test_a_worker_killed_mid_batch(stack: Stack) -> None:
    first = stack.start_worker(MODALKIT_TEST_PIPELINE="tests.pipelines.SleepPipeline")
    stack.start_server()
    runs = stack.tmp / "runs.log"
    with stack.client() as client:
        # 100 ms each, in batches of up to 100: the worker is mid-batch for seconds at a time.
        job_ids = [
            client.post("/api/async/predict", json={"message": {"text": f"sleep 0.1 {runs} {n}"}}).json()["job_id"]
            for n in range(150)
        ]
    deadline = time.monotonic() + 30
    while "running" not in stack.statuses(job_ids).values():
        assert time.monotonic() < deadline, "nothing started"
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # no cleanup, no acknowledgement, leases left held
    killed_at = time.monotonic()
    stack.start_worker(MODALKIT_TEST_PIPELINE="tests.pipelines.SleepPipeline")  # its replacement
    settled = stack.wait_settled(job_ids, since=killed_at)
    statuses = stack.statuses(job_ids)
    assert set(statuses.values()) == {"succeeded"}
    report(
        "worker SIGKILL mid-batch",
        jobs=len(job_ids),
        settled_after_s=round(settled, 1),
        runs=len(runs.read_text().splitlines()),
    )
    assert settled <= SETTLED_WITHIN


def test_the_broker_killed_and_restarted(broker_stack: Stack) -> None:
    """Redis restarts empty (the stream, its messages and the consumer group are gone);
    NATS and RabbitMQ with what they stored (the stream and its consumer, the queue)."""
    stack = broker_stack
    worker = stack.start_worker()
    stack.start_server()
    submitter = Submitter(stack, rate=20)
    submitter.start()
    time.sleep(3)
    [child] = children(worker.pid)
    stack.broker.kill()  # SIGKILL: wake-ups sent and not yet read go with it, or wait on disk
    time.sleep(5)  # jobs accepted meanwhile: their wake-ups cannot be sent
    stack.broker.start()
    back_at = time.monotonic()
    time.sleep(3)
    submitter.stop()
    failed = [answer for answer in submitter.answers if answer[0] != 202]
    assert failed == []  # submits never waited on, nor failed for, the broker
    settled = stack.wait_settled(submitter.accepted, since=back_at)
    assert set(stack.statuses(submitter.accepted).values()) == {"succeeded"}
    assert children(worker.pid) == {child}  # the worker rode it out: never restarted
    # And reads the broker again: every wake-up sent since is read and acknowledged. Within
    # 45 s: an acknowledgement Redis lost (seen: the first on a pooled connection from before
    # the restart) is made when the entry is read again, after the 30 s idle timeout.
    server = peer(stack.broker_kind, stack.broker.url)
    deadline = time.monotonic() + 45
    while server.backlog(BROKER_QUEUE) != 0:
        assert time.monotonic() < deadline, f"the worker does not read the broker: {server.backlog(BROKER_QUEUE)}"
        time.sleep(0.5)
    report(
        f"{stack.broker_kind} killed, restarted",
        accepted=len(submitter.accepted),
        slowest_submit_ms=round(max(submitter.latencies) * 1000),
        settled_after_s=round(settled, 1),
    )
    assert settled <= SETTLED_WITHIN


def test_postgres_stopped_for_ten_seconds(stack: Stack) -> None:
    worker = stack.start_worker()
    stack.start_server()
    submitter = Submitter(stack, rate=20)
    submitter.start()
    time.sleep(3)
    [child] = children(worker.pid)
    stack.postgres.stop()
    time.sleep(10)
    stack.postgres.start()
    back_at = time.monotonic()
    # The web process recovers alone: its pool reconnects with backoff (seconds, longer on
    # a loaded machine), and submits are accepted again.
    while not (submitter.answers and submitter.answers[-1][0] == 202):
        assert time.monotonic() - back_at < 30, "the web process did not recover within 30 s"
        time.sleep(0.2)
    recovered = time.monotonic() - back_at
    time.sleep(2)
    submitter.stop()
    statuses = {status for status, _, _ in submitter.answers}
    unavailable = [(body, retry_after) for status, body, retry_after in submitter.answers if status == 503]
    assert statuses <= {202, 503}, statuses  # never a 500
    assert unavailable, "the outage was not seen"
    assert {json.loads(body)["detail"] for body, _ in unavailable} == {
        "The service is briefly unavailable; retry shortly."
    }
    assert {retry_after for _, retry_after in unavailable} == {"5"}
    assert submitter.answers[-1][0] == 202  # and stays recovered
    settled = stack.wait_settled(submitter.accepted, since=back_at)
    assert set(stack.statuses(submitter.accepted).values()) == {"succeeded"}
    assert children(worker.pid) == {child}
    report(
        "PostgreSQL stopped 10 s",
        accepted=len(submitter.accepted),
        answered_503=len(unavailable),
        web_recovered_after_s=round(recovered, 1),
        settled_after_s=round(settled, 1),
    )
    assert settled <= SETTLED_WITHIN
