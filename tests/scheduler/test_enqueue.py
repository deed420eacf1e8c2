"""Pipelined enqueue (issue 17): the same RQ jobs as RQ's own `enqueue_call`, each try once."""

from __future__ import annotations

import pytest
from rq.exceptions import DuplicateJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from dagstore.core.protocol import JOB_FUNCTION, JobPayload, job_id
from scheduler.enqueue import Enqueuer, job_options

# What a worker and recovery read of a job; enqueued_at and created_at differ by nature.
COMPARED = ("func_name", "kwargs", "timeout", "result_ttl", "failure_ttl", "ttl", "origin")


def payload(ti_id: int, queue: str = "default", timeout: float | None = None) -> JobPayload:
    return JobPayload(ti_id=ti_id, try_number=1, run_id="r", repo="repo", sha="a" * 40,
                      fileloc="dags/d.py", dag_id="d", task_id=f"t{ti_id}", queue=queue,
                      timeout=timeout)  # fmt: skip


def job(enqueuer: Enqueuer, p: JobPayload) -> Job:
    return Job.fetch(job_id(p.ti_id, 1), connection=enqueuer.redis, serializer=JSONSerializer)


def test_batch_jobs_are_the_jobs_enqueue_makes(redis_url):
    enqueuer = Enqueuer(redis_url)
    for i, timeout in enumerate((None, 30.0)):
        one, batched = payload(2 * i + 1, timeout=timeout), payload(2 * i + 2, timeout=timeout)
        reference = enqueuer.queue("default")
        reference.enqueue_call(JOB_FUNCTION, **job_options(one), unique=True)
        assert enqueuer.enqueue([batched]) == 1
        plain, piped = job(enqueuer, one), job(enqueuer, batched)
        for name in COMPARED:
            want = getattr(plain, name)
            if name == "kwargs":  # the payload differs by its ids only
                want = {"payload": {**want["payload"], "ti_id": batched.ti_id,
                                    "task_id": batched.task_id}}  # fmt: skip
            assert getattr(piped, name) == want, name
        assert piped.get_status() == plain.get_status() == "queued"


def test_a_batch_pushes_each_try_once_to_its_queue(redis_url):
    enqueuer = Enqueuer(redis_url)
    first = [payload(i) for i in range(5)] + [payload(9, queue="gpu")]
    assert enqueuer.enqueue(first) == 6
    again = first[:3] + [payload(5)]  # three already in Redis, one new
    assert enqueuer.enqueue(again) == 1
    reference = enqueuer.queue("default")
    with pytest.raises(DuplicateJobError):  # RQ's own unique enqueue refuses it too
        reference.enqueue_call(JOB_FUNCTION, **job_options(first[0]), unique=True)
    default = enqueuer.queue("default").get_job_ids()
    assert default == [job_id(i, 1) for i in range(6)]
    assert enqueuer.queue("gpu").get_job_ids() == [job_id(9, 1)]


def test_redis_down_pushes_nothing_and_raises_nothing():
    enqueuer = Enqueuer("redis://127.0.0.1:9/0")  # nothing listens on the discard port
    assert enqueuer.enqueue([payload(1)]) == 0
