"""The reference for the throughput benchmark: RQ by itself, no pinflow code at all.

The same number of jobs as pinflow's tasks, a no-op function (`os.getpid`), the same number of
workers of each kind (RQ's forking `Worker`, RQ's `SimpleWorker`) on a private redis-server in
the same run: what RQ's own per-job work (some 60 Redis commands per job, the fork) allows on
this machine, the ceiling pinflow's figure is read against. The workers are started and warm
before the clock starts: they wait for a "go" key, then drain the queue in burst mode.
"""

from __future__ import annotations

import subprocess
import sys
import time

from redis import Redis
from rq import Queue

from tests.support.redis import RedisServer

_WORKER = """
import sys
from redis import Redis
from rq import Queue, SimpleWorker, Worker
url, kind = sys.argv[1], sys.argv[2]
redis = Redis.from_url(url)
worker_class = SimpleWorker if kind == "simple" else Worker
worker = worker_class([Queue("ref", connection=redis)], connection=redis)
redis.incr("ready")
redis.blpop(["go"])  # all workers warm before the clock starts
worker.work(burst=True, logging_level="WARNING", with_scheduler=False)
"""


def rq_alone(jobs: int, workers: int, forking: bool) -> float:
    """Jobs per second of `workers` RQ workers running `jobs` no-op jobs."""
    server = RedisServer()
    server.start()
    procs: list[subprocess.Popen] = []
    try:
        redis = Redis.from_url(server.url)
        queue = Queue("ref", connection=redis)
        with redis.pipeline() as pipe:
            specs = [Queue.prepare_data("os.getpid", result_ttl=0) for _ in range(jobs)]
            queue.enqueue_many(specs, pipeline=pipe)
            pipe.execute()
        kind = "fork" if forking else "simple"
        procs = [
            subprocess.Popen([sys.executable, "-c", _WORKER, server.url, kind])
            for _ in range(workers)
        ]
        while int(redis.get("ready") or 0) < workers:  # imports done, waiting for "go"
            time.sleep(0.05)
        started = time.perf_counter()
        redis.rpush("go", *(["1"] * workers))
        for proc in procs:
            proc.wait(timeout=600)
        return jobs / (time.perf_counter() - started)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.cleanup()
