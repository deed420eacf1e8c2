"""`pinflow worker`: an RQ worker on pinflow's queues. Needs Redis and HTTP, nothing else.

RQ's default worker forks a fresh work horse per job, so one task's imports and globals never
leak into the next. SIGTERM asks for a warm shutdown (the current task finishes); a second
SIGTERM stops it at once, and the scheduler's heartbeat check retries that task.

RQ's worker gives up when Redis goes away; this one reconnects with backoff instead, so a
Redis restart never leaves a host without workers. The RQ-side name carries the process id:
a worker restarted under the same `--name` (by `pinflow up`, say) never collides with the
registration its killed predecessor left behind.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from dagstore.protocol import DEFAULT_QUEUE, queue_name

log = logging.getLogger("pinflow.worker")


def rq_name(name: str | None) -> str:
    return f"{name or socket.gethostname()}.{os.getpid()}"


def make_worker(redis_url: str, queues: list[str] | None = None, name: str | None = None) -> Worker:
    connection = Redis.from_url(redis_url, health_check_interval=30)
    rq_queues = [
        Queue(queue_name(q), connection=connection, serializer=JSONSerializer)
        for q in (queues or [DEFAULT_QUEUE])
    ]
    return Worker(rq_queues, connection=connection, name=rq_name(name), serializer=JSONSerializer)


def run_worker(redis_url: str, queues: list[str] | None, burst: bool, name: str | None) -> None:
    # Import the job's code (httpx, pydantic, the loader) once here: every forked work horse
    # inherits it instead of importing it again at each task start.
    import runner.job  # noqa: F401

    delay = 0.5
    while True:
        worker = None
        try:
            worker = make_worker(redis_url, queues, name)  # asks Redis for its version
            if worker.connection.exists(worker.key):
                worker.register_death()  # our own earlier incarnation, cut off from Redis
            worker.work(burst=burst, with_scheduler=False, logging_level="INFO")
            return  # burst done, or a requested shutdown
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if worker is not None and worker._stop_requested:  # noqa: SLF001 - shutting down
                return
            log.warning("Redis unreachable (%s); reconnecting in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
