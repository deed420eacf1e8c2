"""`pinflow worker`: an RQ worker on pinflow's queues. Needs Redis and HTTP, nothing else.

RQ's default worker forks a fresh work horse per job, so one task's imports and globals never
leak into the next. SIGTERM asks for a warm shutdown (the current task finishes); a second
SIGTERM stops it at once, and the scheduler's heartbeat check retries that task.
"""

from __future__ import annotations

from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from dagstore.protocol import DEFAULT_QUEUE, queue_name


def make_worker(redis_url: str, queues: list[str] | None = None, name: str | None = None) -> Worker:
    connection = Redis.from_url(redis_url)
    rq_queues = [
        Queue(queue_name(q), connection=connection, serializer=JSONSerializer)
        for q in (queues or [DEFAULT_QUEUE])
    ]
    return Worker(rq_queues, connection=connection, name=name, serializer=JSONSerializer)


def run_worker(redis_url: str, queues: list[str] | None, burst: bool, name: str | None) -> None:
    worker = make_worker(redis_url, queues, name)
    worker.work(burst=burst, with_scheduler=False, logging_level="INFO")
