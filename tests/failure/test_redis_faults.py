"""Redis faults while tasks run (issue 26): no worker, scheduler or API server exits.

The fault hits while work horses run tasks, so every piece of RQ bookkeeping around a task
(marking it started, its heartbeats, moving it to a registry when it ends) meets the fault:
a FLUSHALL takes the job hash from under a running worker (RQ then raised
`InvalidJobOperation` in `handle_job_success` and the worker quit), and a Redis that turns
replica answers every write with READONLY.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import BACKENDS, cluster_for
from tests.failure.test_crashes import CHAIN, report
from tests.support.cluster import Cluster

RUNS = 12


@pytest.fixture(params=BACKENDS)
def busy_cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    yield from cluster_for(
        request, tmp_path_factory, schedulers=2, workers=2, PINFLOW_HEARTBEAT_TIMEOUT="6"
    )


def wait_for_horses(cluster: Cluster, timeout: float = 30.0) -> None:
    """Until some worker runs a task: the fault must land while work is in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(w.horses() for w in cluster.workers if w.alive):
            return
        time.sleep(0.01)
    raise AssertionError(f"no task started\n{cluster.logs()}")


def start_chain_runs(cluster: Cluster, tmp_path, name: str, runs: int) -> list[str]:
    work = cluster.repo(name, tmp_path / name)
    dag_id = f"{name}_chain"
    cluster.push(work, "chain", **{"dags/chain.py": CHAIN.format(dag_id=dag_id, pause=0.5)})
    return [cluster.trigger(dag_id)["run_id"] for _ in range(runs)]


def assert_all_alive(cluster: Cluster) -> None:
    dead = [p.name for p in cluster.schedulers + cluster.workers if not p.alive]
    assert not dead, f"exited: {dead}\n{cluster.logs()}"
    assert cluster.server is not None and cluster.server.proc is not None
    assert cluster.server.proc.poll() is None, cluster.server.server_log()[-3000:]


def test_flushall_while_tasks_run(busy_cluster: Cluster, tmp_path, uid):
    """FLUSHALL three times while tasks run: every run succeeds once, every process stays."""
    cluster = busy_cluster
    runs = start_chain_runs(cluster, tmp_path, f"fl{uid}", RUNS)
    client = redis.Redis.from_url(cluster.redis.url)
    fault = time.monotonic()
    for _ in range(3):
        wait_for_horses(cluster)
        client.flushall()
        time.sleep(0.6)  # past the end of the tasks that were running
    done = [cluster.wait(r, timeout=120) for r in runs]
    took = time.monotonic() - fault
    report(
        "FLUSHALL x3 while tasks run",
        backend=cluster.backend,
        runs=len(runs),
        succeeded=sum(d["state"] == "success" for d in done),
        seconds_to_all_done=round(took, 1),
    )
    assert_all_alive(cluster)
    for d in done:
        assert d["state"] == "success", (d, cluster.logs())
        assert [t["result"] for t in d["tasks"]] == [1, 2, 3]
        assert all(len(t["tries"]) == 1 for t in d["tasks"]), d  # none ran twice


def test_redis_turns_replica_while_tasks_run(busy_cluster: Cluster, tmp_path, uid):
    """The primary is demoted under the workers (every write answers READONLY) for 3 s,
    then promoted again, as a Sentinel failover back and forth looks to a plain client."""
    cluster = busy_cluster
    runs = start_chain_runs(cluster, tmp_path, f"ro{uid}", RUNS)
    client = redis.Redis.from_url(cluster.redis.url)
    wait_for_horses(cluster)
    # A replica of a port where nothing listens: read-only, and it keeps its data.
    client.replicaof("127.0.0.1", "1")
    time.sleep(3.0)
    client.replicaof("NO", "ONE")
    promoted = time.monotonic()
    done = [cluster.wait(r, timeout=120) for r in runs]
    report(
        "Redis read-only for 3 s while tasks run",
        backend=cluster.backend,
        runs=len(runs),
        succeeded=sum(d["state"] == "success" for d in done),
        seconds_to_all_done=round(time.monotonic() - promoted, 1),
    )
    assert_all_alive(cluster)
    assert all(d["state"] == "success" for d in done), cluster.logs()
