"""Queued tasks whose RQ job went missing are enqueued again; jobs a worker holds are not."""

from __future__ import annotations

from datetime import timedelta

from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from sqlalchemy import update

from dagstore.core.db import Database, db_time
from dagstore.core.protocol import DEFAULT_QUEUE, job_id
from scheduler.enqueue import Enqueuer, requeue_lost
from scheduler.models import DagRun, TaskInstance
from scheduler.taskstate import payload
from tests.support.seed import running_run, ti_id

GRACE = 60.0


def queued_long_ago(db: Database, enqueuer: Enqueuer) -> Job:
    """A task queued 2 x GRACE ago (a long queue), its job in Redis."""
    run = running_run(db, {"a": []}, claimed=False)
    ti = ti_id(db, run, "a")
    with db.write() as session:
        long_ago = db_time(session) - timedelta(seconds=2 * GRACE)
        session.execute(
            update(TaskInstance).where(TaskInstance.id == ti).values(queued_at=long_ago)
        )
        row = session.get(TaskInstance, ti)
        dag_run = session.get(DagRun, run)
        assert row is not None and dag_run is not None
        job = payload(row, dag_run, "seeded-runs", row.try_number)
    assert enqueuer.enqueue([job]) == 1
    return Job.fetch(job_id(ti, 1), connection=enqueuer.redis, serializer=JSONSerializer)


def requeue(db: Database, enqueuer: Enqueuer) -> int:
    with db.read() as session:
        return requeue_lost(session, enqueuer, db_time(session), GRACE)


def test_a_job_a_worker_just_took_is_left_alone(db: Database, redis_url: str):
    """It waited in the queue for longer than the grace, but it was started a moment ago: its
    claim is on the way. Deleting and enqueueing it again would hand the try out twice."""
    enqueuer = Enqueuer(redis_url)
    job = queued_long_ago(db, enqueuer)
    with enqueuer.redis.pipeline() as pipe:  # what an RQ worker does when it takes the job
        job.prepare_for_execution("worker-1", pipe)
        pipe.execute()
    assert requeue(db, enqueuer) == 0
    assert job.get_status(refresh=True) == JobStatus.STARTED


def test_a_job_started_long_ago_and_never_claimed_is_enqueued_again(db: Database, redis_url):
    enqueuer = Enqueuer(redis_url)
    job = queued_long_ago(db, enqueuer)
    with enqueuer.redis.pipeline() as pipe:
        job.prepare_for_execution("worker-1", pipe)
        pipe.hset(job.key, "started_at", "2026-01-01T00:00:00.000000Z")  # its horse died
        pipe.execute()
    assert requeue(db, enqueuer) == 1
    assert job.get_status(refresh=True) == JobStatus.QUEUED


def test_a_job_redis_lost_is_enqueued_again(db: Database, redis_url: str):
    enqueuer = Enqueuer(redis_url)
    job = queued_long_ago(db, enqueuer)
    enqueuer.redis.flushall()
    assert requeue(db, enqueuer) == 1
    assert Job.exists(job.id, connection=enqueuer.redis)


def test_a_job_a_dead_worker_took_off_the_queue_is_enqueued_again(db: Database, redis_url):
    """Found by the HA soak: a worker killed between taking a job off the queue and starting
    it leaves the job marked queued but in no queue; the task waited forever."""
    enqueuer = Enqueuer(redis_url)
    job = queued_long_ago(db, enqueuer)
    queue = enqueuer.queue(DEFAULT_QUEUE)
    taken = Queue.dequeue_any([queue], None, connection=enqueuer.redis, serializer=JSONSerializer)
    assert taken is not None and taken[0].id == job.id  # and the worker dies here
    assert job.get_status(refresh=True) == JobStatus.QUEUED and queue.get_job_ids() == []
    assert requeue(db, enqueuer) == 1
    assert queue.get_job_ids() == [job.id]
    assert requeue(db, enqueuer) == 0, "a job waiting in its queue is not lost"
