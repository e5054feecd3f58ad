"""The multi-process shape docs/how-to/deploy.md describes: several web processes and several worker
processes against one PostgreSQL and one Redis. Nothing may assume a single process: every
accepted job runs once and its result reaches its queue once."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from .stack import Stack

pytestmark = pytest.mark.faults  # processes and a private PostgreSQL: `make faults`


def test_two_web_and_two_worker_processes_run_every_job_once(stack: Stack) -> None:
    queues = {"results": {"BACKEND": "modalkit_django.queues.redis.RedisBackend", "OPTIONS": {"url": stack.redis.url}}}
    routes = [["*", "results"]]
    for _ in range(2):
        stack.start_worker(MODALKIT_TEST_QUEUES=json.dumps(queues), MODALKIT_TEST_QUEUE_ROUTES=json.dumps(routes))
    stack.start_server(processes=2)

    def submit(n: int) -> str:
        with stack.client() as client:
            body = {"message": {"text": f"good {n}"}, "success_queue": "scored"}
            response = client.post("/api/async/predict", json=body)
        assert response.status_code == 202, response.text
        return str(response.json()["job_id"])

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        job_ids = list(pool.map(submit, range(600)))
    stack.wait_settled(job_ids, since=started)

    assert set(stack.statuses(job_ids).values()) == {"succeeded"}
    results = redis.Redis.from_url(stack.redis.url).lrange("modalkit:results:scored", 0, -1)
    delivered = [json.loads(raw) for raw in results]
    assert sorted(body["job_id"] for body in delivered) == sorted(job_ids)
