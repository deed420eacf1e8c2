"""Handing queued task instances to RQ. Redis is only the queue: the database is the record.

Enqueue happens after the database commit that marked the task queued. A crash in between,
a Redis restart or a FLUSHALL leaves a task queued in the database and absent from Redis:
`requeue_lost` finds those and enqueues them again. Job ids are deterministic per try and
enqueued as unique, so enqueueing one try twice runs it once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from rq import Queue
from rq.job import Job, JobStatus
from rq.scripts import _build_hset_args, get_unique_enqueue_script
from rq.serializers import JSONSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from dagstore.core.db import as_utc
from dagstore.core.models import Repo
from dagstore.core.outage import Outage
from dagstore.core.protocol import JOB_FUNCTION, JobPayload, job_id, queue_name
from dagstore.core.redisconn import REDIS_FAULTS, connect, forget_primary
from scheduler.models import DagRun, TaskInstance
from scheduler.taskstate import payload

log = logging.getLogger("pinflow.enqueue")
JOB_TIMEOUT_MARGIN = 600  # fetching the version and starting Python count against RQ's timeout
NO_TIMEOUT = 7 * 24 * 3600
_DEAD = {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED, JobStatus.FINISHED}


PUSH_BACK = "R"  # RQ's unique-enqueue script: RPUSH, as a plain enqueue does


def job_options(p: JobPayload) -> dict[str, Any]:
    """The RQ job of a task's try: deterministic id, so one try is one job."""
    return {
        "kwargs": {"payload": p.model_dump()},
        "timeout": int((p.timeout or NO_TIMEOUT) + JOB_TIMEOUT_MARGIN),
        "job_id": job_id(p.ti_id, p.try_number, p.callback),
        "result_ttl": 0,  # the database keeps the outcome: no RQ copy
        "failure_ttl": 24 * 3600,
    }


class Enqueuer:
    """RQ's queues as the scheduler and the API servers fill them. Redis faults never escape:
    what could not be enqueued waits in the database (`requeue_lost`); an outage is logged
    when it starts and ends, and every fault drops the pooled connections so the next call
    connects afresh (with Sentinel: to whichever Redis is primary now)."""

    def __init__(self, redis_url: str) -> None:
        self.redis = connect(redis_url, socket_timeout=10, socket_connect_timeout=5)
        self._queues: dict[str, Queue] = {}
        self.outage = Outage("Redis", log)

    def fault(self, what: str, exc: Exception) -> None:
        self.outage.failed(what, exc)
        forget_primary(self.redis)

    def queue(self, name: str) -> Queue:
        if name not in self._queues:
            self._queues[name] = Queue(
                queue_name(name), connection=self.redis, serializer=JSONSerializer
            )
        return self._queues[name]

    def enqueue(self, payloads: Iterable[JobPayload]) -> int:
        """Push jobs to RQ in one round trip; returns how many were pushed (a try Redis
        already holds is not pushed again). Redis down: they wait in the DB.

        Each job goes through RQ's own unique-enqueue script, so its check-exists, save and
        push stay one atomic step; only the round trips are shared, on one pipeline (one at
        a time, RQ's enqueue is two round trips per job: a tenth of a scheduler's time when
        it creates runs in batches, bench.scale). RQ's private helpers are used for that
        (rq is pinned below 3); tests compare the jobs with `Queue.enqueue_call`'s."""
        batch = list(payloads)
        if not batch:
            return 0
        queues = sorted({p.queue for p in batch})
        try:
            pipe = self.redis.pipeline(transaction=False)
            script = get_unique_enqueue_script(self.redis)
            for name in queues:
                queue = self.queue(name)
                pipe.sadd(queue.redis_queues_keys, queue.key)
            for p in batch:
                queue = self.queue(p.queue)
                job = queue.create_job(JOB_FUNCTION, status=JobStatus.QUEUED, **job_options(p))
                queue._prepare_for_queue(job)  # origin, enqueued_at, status: as RQ's enqueue
                ttl = job.ttl if job.ttl is not None else -1
                args = [job.id, PUSH_BACK, ttl, *_build_hset_args(job)]
                script(keys=[job.key, queue.key], args=args, client=pipe)
            results = pipe.execute()
        except REDIS_FAULTS as exc:
            self.fault("enqueueing (queued tasks wait in the database)", exc)
            return 0
        self.outage.ended()
        return sum(1 for pushed in results[len(queues) :] if pushed == 1)

    def missing(
        self, payloads: list[JobPayload], claim_grace: datetime, queued_at: dict[int, datetime]
    ) -> list[JobPayload]:
        """Payloads whose job Redis lost, or that a worker took and never ran.

        A job is lost when Redis does not have it or it ended, when it was started before
        `claim_grace` without the task being claimed (its work horse died before the claim),
        or when it was queued before `claim_grace` and is still marked queued but no longer
        waits in its queue: a worker moved it out (RQ's intermediate queue) and died before
        starting it, and RQ itself would only notice in its maintenance, minutes later.
        """
        jobs = Job.fetch_many(
            [job_id(p.ti_id, p.try_number, p.callback) for p in payloads],
            connection=self.redis,
            serializer=JSONSerializer,
        )
        waiting: dict[str, set[str]] = {}  # queue → job ids in it, read only when needed
        lost = []
        for p, job in zip(payloads, jobs, strict=True):
            if job is None:
                lost.append(p)
                continue
            status = job.get_status(refresh=False)
            queued_long_ago = as_utc(queued_at[p.ti_id]) < claim_grace
            # A job waits in the queue for as long as the queue is long: only the time a
            # worker took it (the worker's clock, as RQ records it) says a claim is overdue.
            started_at = as_utc(job.started_at or queued_at[p.ti_id])
            stale_start = (
                status == JobStatus.STARTED and started_at is not None and started_at < claim_grace
            )
            taken_never_started = False
            if status == JobStatus.QUEUED and queued_long_ago:
                if p.queue not in waiting:
                    waiting[p.queue] = set(self.queue(p.queue).get_job_ids())
                taken_never_started = job.id not in waiting[p.queue]
            if status in _DEAD or stale_start or taken_never_started:
                job.delete()
                lost.append(p)
        return lost


def requeue_lost(session: Session, enqueuer: Enqueuer, now: datetime, grace: float) -> int:
    """Enqueue again every task queued in the database whose job Redis does not hold."""
    rows = session.execute(
        select(TaskInstance, DagRun, Repo.name)
        .join(DagRun, DagRun.id == TaskInstance.run_pk)
        .join(Repo, Repo.id == DagRun.repo_id)
        .where(TaskInstance.state == "queued")
        .order_by(TaskInstance.id)
        .limit(5000)
    ).all()
    if not rows:
        return 0
    payloads = [payload(ti, run, repo, ti.try_number) for ti, run, repo in rows]
    queued_at = {ti.id: ti.queued_at or now for ti, _, _ in rows}
    try:
        lost = enqueuer.missing(payloads, now - timedelta(seconds=grace), queued_at)
    except REDIS_FAULTS as exc:
        enqueuer.fault("checking queued tasks", exc)
        return 0
    if lost:
        log.warning("re-enqueueing %d queued task(s) missing from Redis", len(lost))
    return enqueuer.enqueue(lost)
