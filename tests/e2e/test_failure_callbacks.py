"""on_failure for tasks the scheduler fails, not a worker (issue 28, point 6): a try judged
lost because its worker was killed (kill -9, with no retry left), and a mapped task failed at
expansion. The callback runs once, on a worker, on the run's pinned commit, and its output is
in the failed try's log. A DAG without on_failure gets no callback job."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, cluster_for
from tests.support.cluster import Cluster

PINFLOW = [str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "pinflow")]

LOST = """
from pinflow import DAG, task

def alert(context):
    print("CALLBACK-RAN", context["task_id"], "try", context["try_number"],
          "sha", context["sha"][:12], "error:", context["error"].splitlines()[0])

with DAG("{dag_id}", schedule=None{dag_callback}):
    @task(retries=0)
    def sleeper():
        import time
        time.sleep(120)

    sleeper()
"""

MAPPED = """
from pinflow import DAG, task

def alert(context):
    print("CALLBACK-RAN", context["task_id"], "map_index", context["map_index"],
          "error:", context["error"])

with DAG("{dag_id}", schedule=None, on_failure=alert):
    @task
    def parts():
        return "not a list"

    @task
    def load(part):
        return part

    load.expand(part=parts())
"""


@pytest.fixture(scope="module", params=BACKENDS)
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    yield from cluster_for(
        request, tmp_path_factory, schedulers=1, workers=2, PINFLOW_HEARTBEAT_TIMEOUT="6"
    )


def _running_on(cluster: Cluster, run_id: str, task_id: str):
    """The worker whose horse runs the task now."""
    cluster.wait_task(run_id, task_id, "running", timeout=60)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        busy = [w for w in cluster.workers if w.horses()]
        if busy:
            return busy[0]
        time.sleep(0.05)
    raise AssertionError(f"no worker runs {task_id}\n{cluster.logs()}")


def _wait_log(cluster: Cluster, run_id: str, task_id: str, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    log = ""
    while time.monotonic() < deadline:
        log = cluster.task_log(run_id, task_id)
        if text in log:
            return log
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never in the log of {task_id}:\n{log}\n{cluster.logs()}")


def test_a_try_lost_with_its_worker_runs_the_callback_once_elsewhere(
    cluster: Cluster, tmp_path, uid
):
    dag_id = f"lost_{uid}"
    work = cluster.repo(f"l{uid}", tmp_path / "w")
    sha = cluster.push(work, "lost", **{"dags/l.py": LOST.format(
        dag_id=dag_id, dag_callback=", on_failure=alert")})  # fmt: skip
    run = cluster.trigger(dag_id)
    victim = _running_on(cluster, run["run_id"], "sleeper")
    victim.kill9()  # the agent, the RQ worker and the horse: nobody reports the try
    cluster.workers.remove(victim)
    try:
        done = cluster.wait(run["run_id"], timeout=90)
        assert done["state"] == "failed"
        task = done["tasks"][0]
        assert task["state"] == "failed" and "lost" in task["error"], task
        log = _wait_log(cluster, run["run_id"], "sleeper", "end of on_failure callback")
        assert log.count("CALLBACK-RAN") == 1, log
        assert f"CALLBACK-RAN sleeper try 1 sha {sha[:12]} error: lost" in log, log
        survivor = cluster.workers[0].name.removeprefix("worker-")
        assert f"on worker {survivor}" in log, log
        # pinflow logs shows it too, as a user reads it
        cli = subprocess.run(
            [*PINFLOW, "logs", run["run_id"], "sleeper"],
            env={**cluster.process_env(cluster.tokens["read"]), "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 0 and "CALLBACK-RAN sleeper" in cli.stdout, cli
    finally:
        cluster.add_worker(f"{uid}r")


def test_a_lost_try_of_a_dag_without_callback_enqueues_nothing(cluster: Cluster, tmp_path, uid):
    dag_id = f"plain_{uid}"
    work = cluster.repo(f"p{uid}", tmp_path / "w")
    cluster.push(work, "plain", **{"dags/p.py": LOST.format(dag_id=dag_id, dag_callback="")})
    run = cluster.trigger(dag_id)
    victim = _running_on(cluster, run["run_id"], "sleeper")
    victim.kill9()
    cluster.workers.remove(victim)
    try:
        done = cluster.wait(run["run_id"], timeout=90)
        assert done["tasks"][0]["state"] == "failed"
        time.sleep(7)  # a recovery pass or more after the verdict
        log = cluster.task_log(run["run_id"], "sleeper")
        assert "on_failure" not in log, log
        assert all("callback" not in w.log() for w in cluster.workers)
    finally:
        cluster.add_worker(f"{uid}r")


def test_a_mapped_task_failed_at_expansion_runs_its_callback_once(cluster: Cluster, tmp_path, uid):
    dag_id = f"mapfail_{uid}"
    work = cluster.repo(f"m{uid}", tmp_path / "w")
    cluster.push(work, "mapped", **{"dags/m.py": MAPPED.format(dag_id=dag_id)})
    run = cluster.trigger(dag_id)
    done = cluster.wait(run["run_id"], timeout=60)
    assert done["state"] == "failed"
    load = next(t for t in done["tasks"] if t["task_id"] == "load")
    assert load["state"] == "failed" and "list" in load["error"], load
    log = _wait_log(cluster, run["run_id"], "load", "end of on_failure callback")
    assert log.count("CALLBACK-RAN") == 1, log
    assert "CALLBACK-RAN load map_index -1 error: cannot map 'part'" in log, log


SLOW_CALLBACK = """
import os, time
from pinflow import DAG, task

def alert(context):
    marker = {marker!r}
    if not os.path.exists(marker):
        open(marker, "w").close()
        print("CALLBACK-STARTED, then hangs", flush=True)
        time.sleep(300)
    print("CALLBACK-DONE", context["task_id"])

with DAG("{dag_id}", schedule=None, on_failure=alert):
    @task(retries=0)
    def sleeper():
        time.sleep(120)

    sleeper()
"""


def test_a_callback_whose_worker_dies_runs_again_on_another(cluster: Cluster, tmp_path, uid):
    dag_id = f"cbdies_{uid}"
    marker = tmp_path / "callback-started"
    work = cluster.repo(f"d{uid}", tmp_path / "w")
    cluster.push(work, "slow callback", **{"dags/d.py": SLOW_CALLBACK.format(
        dag_id=dag_id, marker=str(marker))})  # fmt: skip
    run = cluster.trigger(dag_id)
    first = _running_on(cluster, run["run_id"], "sleeper")
    first.kill9()
    cluster.workers.remove(first)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), cluster.logs()
        second = next(w for w in cluster.workers if w.horses())  # it runs the callback now
        second.kill9()
        cluster.workers.remove(second)
        cluster.add_worker(f"{uid}n")
        log = _wait_log(cluster, run["run_id"], "sleeper", "end of on_failure callback", 90)
        assert "on_failure callback attempt 1 lost" in log, log
        assert "running it again (attempt 2 of 3)" in log, log
        assert log.count("CALLBACK-DONE sleeper") == 1, log
        assert f"on worker {uid}n" in log, log
    finally:
        while len(cluster.workers) < 2:
            cluster.add_worker(f"{uid}x{len(cluster.workers)}")
