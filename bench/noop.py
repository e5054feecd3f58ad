"""The baseline: raw TaskIQ on the same Redis stream broker, a task that does nothing."""

import os

from taskiq_redis import RedisStreamBroker

broker = RedisStreamBroker(
    os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), queue_name=os.environ["BENCH_QUEUE"]
)


@broker.task(task_name="bench.noop")
async def noop(job_id: str) -> None:
    return None
