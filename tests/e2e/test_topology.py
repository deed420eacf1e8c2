"""The compose.yaml topology on one machine: PostgreSQL, Redis, two API servers with homes of
their own (nothing shared but the database), two schedulers, three workers. 20 runs of the
example DAGs complete, each on the commit that was current when it was created, though a push
lands halfway."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.git import Git
from tests.support.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def topology(request, tmp_path) -> Cluster:
    from tests.support.pg import create_database, drop_database

    admin_url = request.getfixturevalue("postgres_admin_url")
    name = f"pinflow_topo_{int(time.time())}"
    url = create_database(admin_url, name)
    cluster = Cluster(tmp_path / "home", url, "postgresql")
    (tmp_path / "home").mkdir()
    try:
        cluster.start(schedulers=2, workers=0)
        assert cluster.server is not None
        (tmp_path / "home-b").mkdir()
        second = ServerProcess(
            home=tmp_path / "home-b",
            database_url=url,
            backend="postgresql",
            extra_env={"PINFLOW_REDIS_URL": cluster.redis.url},
        )
        second.tokens = cluster.tokens
        second.start()
        cluster.second = second  # type: ignore[attr-defined]
        for i, server in enumerate([cluster.server, second, cluster.server]):
            cluster.add_worker(f"w{i}", api_url=server.url)
        yield cluster
    finally:
        cluster.stop()
        if getattr(cluster, "second", None):
            cluster.second.stop()  # type: ignore[attr-defined]
        drop_database(admin_url, name)


def test_twenty_runs_across_the_topology(topology: Cluster, tmp_path):
    a, b = topology.server, topology.second  # type: ignore[attr-defined]
    assert a is not None
    a.create_repo("examples")
    work = Git(tmp_path / "examples").init()
    shutil.copytree(ROOT / "examples", work.path, dirs_exist_ok=True)
    first = work.commit("examples")
    assert (
        "etl, hello parsed"
        in work.run("push", a.git_url("examples", topology.tokens["push"]), "main").stderr
    )

    runs: list[tuple[str, str]] = []
    for i in range(20):
        server = (a, b)[i % 2]
        if i == 10:  # a push through the other server, halfway
            work.write("dags/helpers.py", (work.path / "dags/helpers.py").read_text() + "\n# v2\n")
            second = work.commit("v2")
            work.run("push", b.git_url("examples", topology.tokens["push"]), "main")
        with server.api("trigger") as api:
            response = api.post(
                f"/dags/{('etl', 'hello')[i % 2]}/runs", json={"conf": {"name": str(i)}}
            )
        assert response.status_code == 201, response.text
        runs.append((response.json()["run_id"], first if i < 10 else second))

    started = time.monotonic()
    for run_id, sha in runs:
        done = topology.wait(run_id, timeout=180)
        assert done["state"] == "success", topology.logs()
        assert done["sha"] == sha
        if done["dag_id"] == "etl":
            load = next(t for t in done["tasks"] if t["task_id"] == "load")
            assert load["result"]["sha"] == sha, "a task ran another commit than its run's"
    print(f"20 runs done {time.monotonic() - started:.1f} s after the last trigger")
    workers = {t["worker"] for run_id, _ in runs for t in topology.run(run_id)["tasks"]}
    assert len(workers) >= 2
