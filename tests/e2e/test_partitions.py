"""A worker and the API server losing each other (issue 12, findings 3, 4 and 5).

- A worker cut off from the API stops its own task before the server hands the try to someone
  else: the two tries of a task never overlap.
- A claim whose answer is lost is asked again and answered again: the try runs.
- Whatever goes wrong in pinflow's own part of a job is reported as the try's failure, with
  the traceback, at once: not noticed as a lost try a heartbeat timeout later.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from dagstore.core.protocol import DEFAULT_QUEUE, JobPayload, queue_name
from runner.cache import VersionCache
from runner.client import WorkerClient
from runner.job import _run
from tests.conftest import cluster_for
from tests.support.cluster import Cluster
from tests.support.procs import PinflowProcess
from tests.support.proxy import Proxy

HEARTBEAT_TIMEOUT = 4.0

LEDGER_DAG = """
import time
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task(retries=1)
    def long(context):
        def note(what):
            with open({ledger!r}, "a") as ledger:
                ledger.write(f"{{what}} {{context['try_number']}} {{time.time()}}\\n")

        note("start")
        try:
            if context["try_number"] == 1:
                time.sleep(30)
        finally:
            note("end")
        return context["try_number"]

    long()
"""

QUICK_DAG = """
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task
    def quick():
        return "ran"

    quick()
"""


@pytest.fixture(scope="module", params=["sqlite"])
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    yield from cluster_for(
        request,
        tmp_path_factory,
        schedulers=1,
        workers=0,
        PINFLOW_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT),
    )


def push_quick(cluster: Cluster, tmp_path: Path, dag_id: str) -> str:
    """QUICK_DAG as `dag_id`, in a repo of its own."""
    work = cluster.repo(dag_id.replace("_", ""), tmp_path / "w")
    cluster.push(work, "q", **{"dags/q.py": QUICK_DAG.format(dag_id=dag_id)})
    return dag_id


def stop(cluster: Cluster, *workers: PinflowProcess) -> None:
    for worker in workers:
        worker.stop()
        cluster.workers.remove(worker)


def take_job(cluster: Cluster, run_id: str) -> JobPayload:
    """Take the run's job off the queue, as a worker would, and give its payload."""
    queue = Queue(
        queue_name(DEFAULT_QUEUE),
        connection=Redis.from_url(cluster.redis.url),
        serializer=JSONSerializer,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for job in queue.jobs:
            if job.kwargs["payload"]["run_id"] == run_id:
                queue.remove(job)
                return JobPayload.model_validate(job.kwargs["payload"])
        time.sleep(0.05)
    raise AssertionError(f"no job of {run_id} was enqueued")


def read_ledger(path: Path) -> dict[tuple[str, int], float]:
    entries = {}
    for line in path.read_text().splitlines():
        what, try_number, at = line.split()
        entries[(what, int(try_number))] = float(at)
    return entries


def test_a_cut_off_worker_stops_its_try_before_the_retry_starts(
    cluster: Cluster, tmp_path: Path, uid: str
):
    assert cluster.server is not None
    ledger = tmp_path / "ledger"
    dag_id = f"cut_{uid}"
    work = cluster.repo(f"cut{uid}", tmp_path / "w")
    cluster.push(work, "l", **{"dags/l.py": LEDGER_DAG.format(dag_id=dag_id, ledger=str(ledger))})
    proxy = Proxy(cluster.server.port)
    cut_off = cluster.add_worker(f"cut{uid}", api_url=proxy.url)
    healthy = None
    try:
        run = cluster.trigger(dag_id)
        deadline = time.monotonic() + 30
        while not ledger.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        healthy = cluster.add_worker(f"ok{uid}")
        proxy.cut()
        cut_at = time.time()
        done = cluster.wait(run["run_id"], timeout=60)
    finally:
        proxy.close()
        stop(cluster, cut_off, *([healthy] if healthy else []))
    assert done["state"] == "success" and done["tasks"][0]["result"] == 2, cluster.logs()
    seen = read_ledger(ledger)
    assert seen[("end", 1)] <= seen[("start", 2)], f"two tries ran at once: {seen}"
    assert seen[("end", 1)] - cut_at < HEARTBEAT_TIMEOUT, "stopped only after the timeout"
    assert "no heartbeat got through" in cut_off.log(), cut_off.log()[-2000:]
    assert "lost: no heartbeat" in done["tasks"][0]["tries"][0]["error"]


class LoseFirstClaimAnswer(httpx.BaseTransport):
    """The server handles the first claim, and its answer never reaches the worker."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/claim") and not self.lost:
            response.read()
            response.close()
            self.lost += 1
            raise httpx.ReadTimeout("the claim's answer was lost", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_claim_whose_answer_was_lost_is_answered_again(
    cluster: Cluster, tmp_path: Path, uid: str
):
    assert cluster.server is not None
    dag_id = push_quick(cluster, tmp_path, f"lost_{uid}")
    run = cluster.trigger(dag_id)
    payload = take_job(cluster, run["run_id"])  # this test is the worker
    transport = LoseFirstClaimAnswer()
    client = WorkerClient(
        cluster.server.url, cluster.tokens["worker"], max_wait=30, transport=transport
    )
    try:
        outcome = _run(payload, client, VersionCache(tmp_path / "cache", client))
    finally:
        client.close()
    assert transport.lost == 1
    assert outcome == "success"
    done = cluster.wait(run["run_id"])
    assert done["state"] == "success" and done["tasks"][0]["result"] == "ran"
    assert len(done["tasks"][0]["tries"]) == 1


def test_the_same_attempt_is_answered_again_and_no_one_else(cluster: Cluster, tmp_path, uid):
    dag_id = push_quick(cluster, tmp_path, f"twice_{uid}")
    run = cluster.trigger(dag_id)
    ti_id = take_job(cluster, run["run_id"]).ti_id
    claim = {"try_number": 1, "worker": "w1", "attempt": "a" * 32}
    with cluster.api("worker") as api:
        first = api.post(f"/task-instances/{ti_id}/claim", json=claim)
        again = api.post(f"/task-instances/{ti_id}/claim", json=claim)
        other = api.post(f"/task-instances/{ti_id}/claim", json={**claim, "attempt": "b" * 32})
        bare = api.post(f"/task-instances/{ti_id}/claim", json={"try_number": 1, "worker": "w1"})
        short = api.post(f"/task-instances/{ti_id}/claim", json={**claim, "attempt": "x"})
        assert first.status_code == 200 and again.status_code == 200, again.text
        answered = {k: v for k, v in first.json().items() if k != "credential"}
        assert {k: v for k, v in again.json().items() if k != "credential"} == answered
        # Each answer carries a new credential for the try: the one that arrived works.
        stale, live = first.json()["credential"], again.json()["credential"]
        beat = {"try_number": 1}
        path = f"/task-instances/{ti_id}/heartbeat"
        assert cluster.server is not None
        with cluster.server.api_as(stale) as as_stale, cluster.server.api_as(live) as as_live:
            assert as_stale.post(path, json=beat).status_code == 403
            assert as_live.post(path, json=beat).status_code == 200
        assert first.json()["heartbeat_timeout"] == HEARTBEAT_TIMEOUT
        assert other.status_code == 409 and bare.status_code == 409
        assert short.status_code == 400
        finish = {"try_number": 1, "state": "success", "result": 1}
        assert api.post(f"/task-instances/{ti_id}/finish", json=finish).status_code == 200
        assert api.post(f"/task-instances/{ti_id}/claim", json=claim).status_code == 409
    assert len(cluster.wait(run["run_id"])["tasks"][0]["tries"]) == 1


def test_a_failure_in_the_worker_itself_is_reported_at_once(cluster: Cluster, tmp_path, uid):
    """The version cache cannot be created (its folder is under a file): the try fails with
    the traceback in its log, without waiting for the heartbeat timeout."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    dag_id = push_quick(cluster, tmp_path, f"broken_{uid}")
    worker = cluster.add_worker(f"bad{uid}", PINFLOW_CACHE_DIR=str(blocker / "cache"))
    try:
        done = cluster.wait(cluster.trigger(dag_id)["run_id"], timeout=60)
    finally:
        stop(cluster, worker)
    task = done["tasks"][0]
    assert done["state"] == "failed" and task["state"] == "failed"
    assert "the worker could not run the task" in task["error"]
    assert "NotADirectoryError" in task["error"]
    assert "no heartbeat" not in task["error"]
    # From the claim to the end, as the server recorded them: a lost try would end a heartbeat
    # timeout after its claim. (Not from the trigger: on a loaded machine scheduling and
    # queueing alone may take longer than that.)
    (only,) = task["tries"]
    claimed, ended = (datetime.fromisoformat(only[k]) for k in ("started_at", "ended_at"))
    assert (ended - claimed).total_seconds() < HEARTBEAT_TIMEOUT, "noticed only as a lost try"
    assert "NotADirectoryError" in cluster.task_log(done["run_id"], "quick")
