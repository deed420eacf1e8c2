"""Worker behaviour on real processes: warm shutdown, and an API server that goes away."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from redis import Redis
from rq import Queue
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from dagstore.core.protocol import DEFAULT_QUEUE, JOB_FUNCTION, queue_name
from tests.conftest import cluster_for
from tests.support.cluster import Cluster
from tests.support.dags import sleeps_on_first_try
from tests.support.proxy import Proxy

SLEEPER = """
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task
    def sleeper():
        import time
        time.sleep({seconds})
        return "slept"

    @task
    def after(x):
        return x + " and after"

    after(sleeper())
"""


@pytest.fixture(scope="module", params=["sqlite"])
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    # 20 s: the API-down test's restart of the server (seconds on a loaded machine) plus the
    # worker's backoff must fit in it, or the try is rightly judged lost.
    yield from cluster_for(
        request, tmp_path_factory, schedulers=1, workers=1, PINFLOW_HEARTBEAT_TIMEOUT="20"
    )


def sleeper_running(cluster: Cluster, tmp_path, dag_id: str, seconds: int) -> dict:
    """A run of SLEEPER (in a repo of its own) whose sleeper task is running now."""
    work = cluster.repo(dag_id.replace("_", ""), tmp_path / "w")
    cluster.push(work, "s", **{"dags/s.py": SLEEPER.format(dag_id=dag_id, seconds=seconds)})
    run = cluster.trigger(dag_id)
    cluster.wait_task(run["run_id"], "sleeper", "running")
    return run


def test_sigterm_lets_the_current_task_finish(cluster: Cluster, tmp_path, uid):
    run = sleeper_running(cluster, tmp_path, f"term_{uid}", seconds=3)
    worker = cluster.workers[0]
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)
    worker.proc.wait(30)  # warm shutdown: it exits by itself once the task is done
    tasks = {t["task_id"]: t for t in cluster.run(run["run_id"])["tasks"]}
    assert tasks["sleeper"]["state"] == "success"
    cluster.workers.remove(worker)
    cluster.add_worker(f"{uid}b")
    assert cluster.wait(run["run_id"])["state"] == "success"


def wait_for_log(proc, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and text not in proc.log():
        time.sleep(0.05)
    assert text in proc.log(), proc.log()[-2000:]


def test_sigterm_stops_an_idle_worker_at_once(cluster: Cluster, uid):
    """With no task in hand a warm shutdown has nothing to wait for. RQ ends its work loop by
    raising StopRequested without marking the worker stopped, and the loop that outlives Redis
    faults (issue 26) took that for a loop that ended by itself and started it again: the
    worker never exited on SIGTERM and had to be killed."""
    worker = cluster.add_worker(f"{uid}idle")
    wait_for_log(worker, "Listening on")
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)
    try:
        assert worker.proc.wait(20) == 0, worker.log()[-2000:]
    finally:
        cluster.workers.remove(worker)
        worker.stop()
    assert "carrying on" not in worker.log(), worker.log()[-2000:]


ON_QUEUE = """
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task(queue="{queue}")
    def claimed():
        return "ran"

    claimed()
"""


def test_sigterm_while_the_try_is_claimed_lets_it_run(cluster: Cluster, tmp_path, uid):
    """A job is the worker's from the moment it is dequeued: a SIGTERM that lands while the
    claim waits for the API (before RQ's state says busy) lets it run, then the worker exits.
    RQ raised StopRequested from inside the claim: the claimed try never ran and the worker
    did not exit (the flaky test_sigterm_lets_the_current_task_finish under load)."""
    dag_id, queue = f"claimed_{uid}", f"q{uid}"
    work = cluster.repo(dag_id.replace("_", ""), tmp_path / "w")
    cluster.push(work, "c", **{"dags/c.py": ON_QUEUE.format(dag_id=dag_id, queue=queue)})
    assert cluster.server is not None
    proxy = Proxy(cluster.server.port)
    proxy.hold()
    worker = cluster.add_worker(f"{uid}claim", api_url=proxy.url, args=("--queue", queue))
    try:
        run = cluster.trigger(dag_id)
        assert proxy.held.wait(30), worker.log()[-2000:]  # the claim is on its way
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGTERM)
        wait_for_log(worker, "warm shut")
        proxy.release()
        assert worker.proc.wait(30) == 0, worker.log()[-2000:]
    finally:
        proxy.close()
        cluster.workers.remove(worker)  # the tests after it take workers[0]: a live one
        worker.stop()
    done = cluster.run(run["run_id"])
    assert done["state"] == "success", cluster.logs()
    assert done["tasks"][0]["result"] == "ran"


def test_api_server_down_mid_task_the_worker_waits_and_reports(cluster: Cluster, tmp_path, uid):
    work = cluster.repo(f"d{uid}", tmp_path / "w")
    dag_id = f"down_{uid}"
    cluster.push(work, "s", **{"dags/s.py": SLEEPER.format(dag_id=dag_id, seconds=2)})
    run = cluster.trigger(dag_id)
    cluster.wait_task(run["run_id"], "sleeper", "running")
    assert cluster.server is not None
    seen = sum(w.log().count("unreachable") for w in cluster.workers)
    cluster.server.stop()  # the version is cached already: the task goes on
    # Down until the worker has found it so (a heartbeat or the report failed), not for a
    # fixed time: the downtime must stay well under the heartbeat timeout, and a restart on
    # a loaded machine takes seconds of its own.
    deadline = time.monotonic() + 30
    while sum(w.log().count("unreachable") for w in cluster.workers) == seen:
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.05)
    cluster.server.start()
    done = cluster.wait(run["run_id"])
    assert done["state"] == "success", cluster.logs()
    assert done["tasks"][-1]["result"] == "slept and after"


def test_second_sigterm_stops_at_once_and_the_task_is_retried(cluster: Cluster, tmp_path, uid):
    work = cluster.repo(f"c{uid}", tmp_path / "w")
    dag_id = f"cold_{uid}"
    cluster.push(work, "s", **{"dags/s.py": sleeps_on_first_try(dag_id, 120, task_id="long")})
    run = cluster.trigger(dag_id)
    cluster.wait_task(run["run_id"], "long", "running")
    worker = cluster.workers[0]
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)
    time.sleep(1.5)  # RQ ignores a second signal within 1 s (it may be a duplicate)
    worker.proc.send_signal(signal.SIGTERM)  # cold shutdown: the task is abandoned
    assert worker.proc.wait(30) is not None
    cluster.workers.remove(worker)
    cluster.add_worker(f"{uid}c")
    done = cluster.wait(run["run_id"], timeout=90)
    task = done["tasks"][0]
    assert done["state"] == "success" and task["result"] == 2, cluster.logs()
    assert task["tries"][0]["state"] == "failed"


def test_a_try_taken_away_stops_its_task_at_the_next_heartbeat(cluster: Cluster, tmp_path, uid):
    """Freeze a running work horse past the heartbeat timeout: the scheduler fails the try.
    Thawed, the horse finds it has been silent too long (or its next heartbeat gets 409) and
    stops the task there, not 60 s later."""
    run = sleeper_running(cluster, tmp_path, f"taken_{uid}", seconds=60)
    worker = cluster.workers[0]
    assert worker.proc is not None
    horses = worker.horses()
    assert len(horses) == 1
    os.kill(horses[0], signal.SIGSTOP)
    try:
        cluster.wait_task(run["run_id"], "sleeper", "failed", timeout=40)
    finally:
        os.kill(horses[0], signal.SIGCONT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "not reported" not in worker.log():
        time.sleep(0.2)
    assert "not reported" in worker.log(), worker.log()[-2000:]
    assert not worker.horses()  # the horse is gone: it did not sleep on
    tasks = {t["task_id"]: t for t in cluster.run(run["run_id"])["tasks"]}
    assert "no heartbeat" in tasks["sleeper"]["error"]  # the scheduler's verdict stands


FANOUT = """
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task
    def noop(x=0):
        return x

    root = noop.override(task_id="root")()
    for i in range({leaves}):
        noop.override(task_id=f"leaf_{{i}}")(root)
"""


def test_work_horses_never_connect_to_redis(cluster: Cluster, tmp_path, uid):
    """The forked horse runs the task and nothing else: RQ's bookkeeping is the worker's, over
    the connection it keeps. Before, every horse opened a Redis connection of its own."""
    dag_id = f"quiet_{uid}"
    work = cluster.repo(dag_id.replace("_", ""), tmp_path / "w")
    cluster.push(work, "f", **{"dags/f.py": FANOUT.format(dag_id=dag_id, leaves=19)})
    redis = Redis.from_url(cluster.redis.url)
    before = redis.info("stats")["total_connections_received"]
    run = cluster.wait(cluster.trigger(dag_id)["run_id"])
    assert run["state"] == "success", cluster.logs()
    opened = redis.info("stats")["total_connections_received"] - before
    assert opened <= 3, f"{opened} new Redis connections for 20 tasks"  # the test's own polls


def test_a_horse_that_raises_leaves_its_traceback_in_rq(cluster: Cluster, tmp_path, uid):
    """A job with pinflow's entry point but an unreadable payload fails in the horse: RQ's
    failed-job record carries the horse's traceback, and the worker goes on to the next job."""
    redis = Redis.from_url(cluster.redis.url)
    queue = Queue(queue_name(DEFAULT_QUEUE), connection=redis, serializer=JSONSerializer)
    job = queue.enqueue_call(JOB_FUNCTION, kwargs={"payload": {"ti_id": "x"}}, job_id=f"bad-{uid}")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and job.get_status(refresh=True) != JobStatus.FAILED:
        time.sleep(0.1)
    assert job.get_status(refresh=True) == JobStatus.FAILED
    failure = job.latest_result()
    assert failure is not None and "ValidationError" in (failure.exc_string or "")
    dag_id = f"after_bad_{uid}"
    work = cluster.repo(dag_id.replace("_", ""), tmp_path / "w")
    cluster.push(work, "s", **{"dags/s.py": SLEEPER.format(dag_id=dag_id, seconds=0)})
    assert cluster.wait(cluster.trigger(dag_id)["run_id"])["state"] == "success"


def test_a_refused_token_puts_the_job_back_and_says_so(tmp_path):
    """A worker whose token the API refuses (revoked) neither runs nor fails the job: it puts
    it back at the head of its queue, says so loudly, waits longer each time, and a worker
    with a live token then runs it."""
    from tests.support.cluster import Cluster

    running = Cluster(tmp_path / "home", f"sqlite:///{tmp_path}/home/pinflow.db", "sqlite")
    (tmp_path / "home").mkdir()
    try:
        running.start(schedulers=1, workers=0)
        refused = running.add_worker("refused", PINFLOW_TOKEN=running.tokens["revoked"])
        work = running.repo("refusedrepo", tmp_path / "w")
        running.push(work, "s", **{"dags/s.py": SLEEPER.format(dag_id="refused", seconds=0)})
        run = running.trigger("refused")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and refused.log().count("TOKEN REFUSED") < 2:
            time.sleep(0.2)
        assert refused.log().count("TOKEN REFUSED") >= 2, refused.log()[-2000:]
        assert "trying again in 1 s" in refused.log() and "trying again in 2 s" in refused.log()
        tasks = {t["task_id"]: t for t in running.run(run["run_id"])["tasks"]}
        assert tasks["sleeper"]["state"] == "queued" and not tasks["sleeper"]["tries"]
        redis = Redis.from_url(running.redis.url)
        queue = Queue(queue_name(DEFAULT_QUEUE), connection=redis, serializer=JSONSerializer)
        assert not queue.failed_job_registry.get_job_ids(), "the job was burned"
        running.add_worker("live")
        assert running.wait(run["run_id"])["state"] == "success"
    finally:
        running.stop()
