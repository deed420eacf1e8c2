"""Enqueueing the first tasks of a batch of new runs in one Redis round trip.

`Enqueuer.enqueue` pushes a job at a time: RQ's unique enqueue is a queue-set update and a Lua
script call, two round trips per job, over half of the enqueue time and about a tenth of a
scheduler's when it creates runs in batches (bench.scale's profile). Here each job goes through
the same RQ script, so its check-exists, save and push stay one atomic step and an id Redis
has is refused as before; only the round trips are shared, on one pipeline for the batch.

The job's options must be those `Enqueuer.enqueue` gives it (a test compares the two): they
belong in one place in `scheduler.enqueue`, which this module may not change yet.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError
from rq.job import JobStatus
from rq.scripts import _build_hset_args, get_unique_enqueue_script

from dagstore.protocol import JOB_FUNCTION, JobPayload, job_id
from scheduler.enqueue import JOB_TIMEOUT_MARGIN, NO_TIMEOUT, Enqueuer

log = logging.getLogger("pinflow.enqueue")
PUSH_BACK = "R"  # RQ's script: RPUSH, as a plain enqueue does


def job_options(p: JobPayload) -> dict[str, Any]:
    """RQ job options for a task's try: as `Enqueuer.enqueue` sets them."""
    return {
        "kwargs": {"payload": p.model_dump()},
        "timeout": int((p.timeout or NO_TIMEOUT) + JOB_TIMEOUT_MARGIN),
        "job_id": job_id(p.ti_id, p.try_number),
        "result_ttl": 0,  # the database keeps the outcome: no RQ copy
        "failure_ttl": 24 * 3600,
    }


def enqueue_batch(enqueuer: Enqueuer, payloads: list[JobPayload]) -> int:
    """Push jobs to RQ in one round trip; returns how many were pushed (a try already in Redis
    is not pushed again). Redis down: they wait in the DB for `requeue_lost`."""
    if not payloads:
        return 0
    queues = sorted({p.queue for p in payloads})
    try:
        pipe = enqueuer.redis.pipeline(transaction=False)
        script = get_unique_enqueue_script(enqueuer.redis)
        for name in queues:
            queue = enqueuer.queue(name)
            pipe.sadd(queue.redis_queues_keys, queue.key)
        for p in payloads:
            queue = enqueuer.queue(p.queue)
            job = queue.create_job(JOB_FUNCTION, status=JobStatus.QUEUED, **job_options(p))
            queue._prepare_for_queue(job)  # origin, enqueued_at, status: as RQ's enqueue does
            ttl = job.ttl if job.ttl is not None else -1
            args = [job.id, PUSH_BACK, ttl, *_build_hset_args(job)]
            script(keys=[job.key, queue.key], args=args, client=pipe)
        results = pipe.execute()
    except RedisError as exc:
        log.warning("Redis unavailable, queued tasks wait for recovery: %s", exc)
        return 0
    return sum(1 for pushed in results[len(queues) :] if pushed == 1)
