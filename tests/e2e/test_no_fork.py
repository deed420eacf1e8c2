"""`pinflow worker --no-fork`: tasks run in the worker process, versions still never mix."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import cluster_for
from tests.e2e.test_runs import FLAKY, PIPELINE
from tests.support.cluster import Cluster


@pytest.fixture(scope="module", params=["sqlite"])
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    # One worker, so every task below runs in the same worker process.
    yield from cluster_for(
        request,
        tmp_path_factory,
        schedulers=1,
        workers=1,
        worker_args=("--no-fork",),
        PINFLOW_HEARTBEAT_TIMEOUT="4",
    )


def test_one_process_runs_each_version_with_its_own_modules(cluster: Cluster, tmp_path, uid):
    """helpers.py differs between the versions: each run sees its own, in any order."""
    work = cluster.repo(f"nf{uid}", tmp_path / "w")
    dag_id = f"nofork_{uid}"
    one = cluster.push(
        work,
        "v1",
        **{
            "dags/helpers.py": "VERSION = 'one'\n",
            "dags/pipe.py": PIPELINE.format(dag_id=dag_id, sleep=0),
        },
    )
    two = cluster.push(work, "v2", **{"dags/helpers.py": "VERSION = 'two'\n"})
    for sha, expected in [(two, "two"), (one, "one"), (two, "two"), (one, "one")]:
        run = cluster.wait(cluster.trigger(dag_id, sha=sha)["run_id"])
        assert run["state"] == "success", cluster.logs()
        results = [t["result"] for t in run["tasks"]]
        assert results[0]["version"] == expected and results[1]["version"] == expected
    workers = {t["worker"] for t in run["tasks"]}
    assert len(workers) == 1  # one process ran them all


def test_failures_and_timeouts_leave_the_worker_running(cluster: Cluster, tmp_path, uid):
    work = cluster.repo(f"nff{uid}", tmp_path / "w")
    dag_id = f"nofork_flaky_{uid}"
    cluster.push(work, "flaky", **{"dags/flaky.py": FLAKY.format(dag_id=dag_id)})
    run = cluster.wait(cluster.trigger(dag_id)["run_id"])
    tasks = {t["task_id"]: t for t in run["tasks"]}
    assert tasks["flaky"]["state"] == "success" and tasks["flaky"]["result"] == 2
    assert tasks["slow"]["state"] == "failed" and "timed out after 1 s" in tasks["slow"]["error"]
    assert tasks["not_json"]["state"] == "failed"
    assert cluster.workers[0].alive


def test_a_task_calling_sys_exit_fails_alone(cluster: Cluster, tmp_path, uid):
    work = cluster.repo(f"nfx{uid}", tmp_path / "w")
    dag_id = f"nofork_exit_{uid}"
    source = (
        "from pinflow import DAG, task\n\n"
        f'with DAG("{dag_id}", schedule=None):\n'
        "    @task\n"
        "    def exits():\n"
        "        raise SystemExit(3)\n\n"
        "    @task\n"
        "    def fine():\n"
        "        return 'still here'\n\n"
        "    exits()\n"
        "    fine()\n"
    )
    cluster.push(work, "exit", **{"dags/exit.py": source})
    run = cluster.wait(cluster.trigger(dag_id)["run_id"])
    tasks = {t["task_id"]: t for t in run["tasks"]}
    assert tasks["exits"]["state"] == "failed" and "SystemExit" in tasks["exits"]["error"]
    assert tasks["fine"]["state"] == "success" and tasks["fine"]["result"] == "still here"
    assert cluster.workers[0].alive
