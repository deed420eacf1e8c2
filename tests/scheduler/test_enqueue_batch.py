"""Pipelined enqueue (issue 17): the same RQ jobs as `Enqueuer.enqueue`, each try once."""

from __future__ import annotations

from rq.job import Job
from rq.serializers import JSONSerializer

from dagstore.protocol import JobPayload, job_id
from scheduler.enqueue import Enqueuer
from scheduler.enqueue_batch import enqueue_batch

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
        assert enqueuer.enqueue([one]) == 1
        assert enqueue_batch(enqueuer, [batched]) == 1
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
    assert enqueue_batch(enqueuer, first) == 6
    again = first[:3] + [payload(5)]  # three already in Redis, one new
    assert enqueue_batch(enqueuer, again) == 1
    assert enqueuer.enqueue(first[:1]) == 0, "a try enqueued in a batch is refused one by one"
    default = enqueuer.queue("default").get_job_ids()
    assert default == [job_id(i, 1) for i in range(6)]
    assert enqueuer.queue("gpu").get_job_ids() == [job_id(9, 1)]


def test_redis_down_pushes_nothing_and_raises_nothing():
    enqueuer = Enqueuer("redis://127.0.0.1:9/0")  # nothing listens on the discard port
    assert enqueue_batch(enqueuer, [payload(1)]) == 0
