"""Failure scenarios on real processes (issue 7). Each prints the figures it measured as a
`[reliability]` line; RELIABILITY.md records them with the command."""

from __future__ import annotations

import random
import shutil
import statistics
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from dagstore.core.db import Database, as_utc
from pinflow.migrate import upgrade
from scheduler.models import DagRun
from tests.conftest import BACKENDS, cluster_for
from tests.support.cluster import Cluster
from tests.support.git import Git, race_pushes, work_on_tip
from tests.support.pg import PostgresCluster, create_database, find_pg_bin
from tests.support.procs import PinflowProcess
from tests.support.seed import every, insert_dags
from tests.support.server import ServerProcess, start_server


def report(scenario: str, **figures: object) -> None:
    print(f"[reliability] {scenario}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# -- 1. schedulers killed at random moments ------------------------------------------------


def test_scheduler_kill_storm(database_url, redis_url, tmp_path):
    """20 kill -9s of one of two schedulers while 20 DAGs tick every second: no duplicate run,
    no tick left without a run, and no tick waits much longer than the lease TTL."""
    ttl, dags, kills = 2.0, 20, 20
    db = Database(database_url)
    upgrade(db)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=10)
    insert_dags(db, "storm", {f"tick{i:02}": every(1, start) for i in range(dags)})

    def scheduler(name: str) -> PinflowProcess:
        return PinflowProcess(
            f"scheduler-{name}",
            ["scheduler", "--name", name],
            tmp_path,
            database_url,
            PINFLOW_REDIS_URL=redis_url,
            PINFLOW_LEASE_TTL=str(ttl),
        ).start()

    rng = random.Random(20261123)
    steady, victim = scheduler("steady"), scheduler("victim-0")
    storm_started = datetime.now(UTC)
    try:
        for k in range(kills):
            time.sleep(rng.uniform(0.2, 1.0))
            victim.kill9()
            victim = scheduler(f"victim-{k + 1}")
        storm_ended = datetime.now(UTC)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # both catch up to the end of the storm
            with db.read() as session:
                rows = session.execute(
                    select(DagRun.dag_id, DagRun.logical_date, DagRun.created_at)
                ).all()
            newest = {}
            for dag_id, date, _ in rows:
                newest[dag_id] = max(newest.get(dag_id, start), as_utc(date))
            if len(newest) == dags and min(newest.values()) >= storm_ended.replace(microsecond=0):
                break
            time.sleep(0.2)
    finally:
        victim.stop()
        steady.stop()
        db.dispose()
    by_dag: dict[str, list[datetime]] = {}
    lags = []
    for dag_id, date, created in rows:
        by_dag.setdefault(dag_id, []).append(as_utc(date))
        if as_utc(date) >= storm_started:
            lags.append((as_utc(created) - as_utc(date)).total_seconds())
    duplicates = sum(len(d) - len(set(d)) for d in by_dag.values())
    gaps = 0
    for dates in by_dag.values():
        dates.sort()
        expected = [start + timedelta(seconds=i) for i in range(len(dates))]
        gaps += sum(1 for a, b in zip(dates, expected, strict=True) if a != b)
    lags.sort()
    report(
        "scheduler kill storm",
        backend=db.engine.dialect.name,
        kills=kills,
        runs=len(rows),
        duplicates=duplicates,
        runs_left_behind=gaps,
        lag_p50_s=round(statistics.median(lags), 2),
        lag_p99_s=round(lags[int(len(lags) * 0.99) - 1], 2),
        lag_max_s=round(lags[-1], 2),
    )
    assert duplicates == 0 and gaps == 0
    assert lags[-1] < ttl + 3.0, "a killed scheduler's DAGs waited longer than its lease"


# -- 3. Redis killed and restarted empty ------------------------------------------------------

CHAIN = """
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None, max_active_runs=50):
    @task(retries=1)
    def a():
        import time
        time.sleep({pause})
        return 1

    @task(retries=1)
    def b(x):
        import time
        time.sleep({pause})
        return x + 1

    @task(retries=1)
    def c(x):
        return x + 1

    c(b(a()))
"""


@pytest.fixture(scope="module", params=BACKENDS)
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    yield from cluster_for(
        request, tmp_path_factory, schedulers=1, workers=2, PINFLOW_HEARTBEAT_TIMEOUT="6"
    )


def test_redis_restarted_empty_mid_run(cluster: Cluster, tmp_path, uid):
    work = cluster.repo(f"rr{uid}", tmp_path / "w")
    dag_id = f"redis_{uid}"
    cluster.push(work, "chain", **{"dags/chain.py": CHAIN.format(dag_id=dag_id, pause=0.5)})
    runs = [cluster.trigger(dag_id)["run_id"] for _ in range(6)]
    time.sleep(1.0)
    cluster.redis.stop()  # killed: every queue, registry and job is gone
    time.sleep(1.0)
    restarted = time.monotonic()
    cluster.redis.start()  # empty
    done = [cluster.wait(r, timeout=120) for r in runs]
    took = time.monotonic() - restarted
    succeeded = sum(d["state"] == "success" for d in done)
    report(
        "redis restarted empty",
        backend=cluster.backend,
        runs=len(runs),
        succeeded=succeeded,
        seconds_to_all_done=round(took, 1),
    )
    assert succeeded == len(runs), cluster.logs()
    for d in done:
        assert [t["result"] for t in d["tasks"]] == [1, 2, 3]


# -- 6. force-push and branch deletion with runs in flight -----------------------------------

PINNED = """
from pinflow import DAG, task
from helpers import VERSION

with DAG("{dag_id}", schedule=None):
    @task
    def slow():
        import time
        time.sleep(2)
        return VERSION

    @task
    def after(v):
        return v

    after(slow())
"""


def test_force_push_and_branch_deletion_mid_run(cluster: Cluster, tmp_path, uid):
    work = cluster.repo(f"fp{uid}", tmp_path / "w")
    dag_id = f"rewrite_{uid}"
    old = cluster.push(
        work,
        "v1",
        **{"dags/helpers.py": "VERSION = 'v1'\n", "dags/pin.py": PINNED.format(dag_id=dag_id)},
    )
    work.run("checkout", "-q", "-b", "feature")
    work.write("dags/helpers.py", "VERSION = 'feature'\n")
    feature = work.commit("feature")
    work.run("push", work.remote, "feature")  # type: ignore[attr-defined]
    run_main = cluster.trigger(dag_id)["run_id"]
    run_feature = cluster.trigger(dag_id, ref="feature")["run_id"]
    assert cluster.run(run_feature)["sha"] == feature
    time.sleep(0.5)
    # Rewrite main so `old` is no longer on it, delete feature, and drop the server's archives.
    work.run("checkout", "-q", "main")
    work.run("commit", "-q", "--amend", "-m", "rewritten", "--allow-empty")
    assert work.run("push", "--force", work.remote, "main").returncode == 0  # type: ignore[attr-defined]
    assert work.run("push", work.remote, "--delete", "feature").returncode == 0  # type: ignore[attr-defined]
    shutil.rmtree(cluster.home / "cache", ignore_errors=True)  # packs and archives
    results = {}
    for run_id, sha in ((run_main, old), (run_feature, feature)):
        done = cluster.wait(run_id, timeout=60)
        assert done["state"] == "success" and done["sha"] == sha, cluster.logs()
        results[sha] = done["tasks"][-1]["result"]
    assert results == {old: "v1", feature: "feature"}
    with cluster.api("read") as api:  # both orphaned commits still build and serve
        for sha in (old, feature):
            assert api.get(f"/repos/fp{uid}/archive/{sha}.tar.gz").status_code == 200
    report(
        "force-push and branch deletion mid-run",
        backend=cluster.backend,
        runs=2,
        completed_on_pinned_commit=2,
    )


# -- 7. two pushes at the same moment, 50 times ----------------------------------------------


def test_fifty_simultaneous_push_pairs(cluster: Cluster, tmp_path, uid):
    """Two servers with homes of their own on one database (issue 13): each round, one push
    through A and one through B at the same moment. Exactly one lands, the other is refused
    as git refuses it, and the ref is the winner's."""
    name = f"race{uid}"
    assert cluster.server is not None
    other = start_server(tmp_path / "home-b", cluster.database_url)
    try:
        cluster.server.create_repo(name)
        urls = [s.git_url(name, cluster.tokens["push"]) for s in (cluster.server, other)]
        base = Git(tmp_path / "base").init()
        base.commit("base", **{"a.py": "0\n"})
        base.run("push", urls[0], "main")
        landed = refused = 0
        for round_no in range(50):
            pair = []
            for side, url in zip("ab", urls, strict=True):
                g = work_on_tip(tmp_path / f"{round_no}{side}", url)
                g.commit(f"{round_no}{side}", **{f"{side}.py": f"{round_no}\n"})
                pair.append(g)
            results = race_pushes(pair, urls)
            winners = [sha for sha, r in results if r.returncode == 0]
            for _, r in results:
                if r.returncode != 0:
                    assert (
                        "rejected" in r.stderr
                        or "failed to write" in r.stderr
                        or "fetch first" in r.stderr
                    ), r.stderr
            with other.api("read") as api:
                tip = api.get(f"/repos/{name}/refs").json()["refs"]["refs/heads/main"]
            assert len(winners) == 1 and tip == winners[0]
            landed += len(winners)
            refused += len(results) - len(winners)
        check = Git(tmp_path / "fsck").init()
        check.run("fetch", "-q", urls[1], "main")
        fsck = check.run("fsck", "--full", check=False)
    finally:
        other.stop()
    report(
        "simultaneous pushes through two servers",
        backend=cluster.backend,
        rounds=50,
        landed=landed,
        refused_cleanly=refused,
        fsck_ok=fsck.returncode == 0,
    )
    assert fsck.returncode == 0


# -- 5. the database restarted mid-run (PostgreSQL) ------------------------------------------


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A cluster of its own: restarting the shared one would disturb other tests."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL not installed")
    pg = PostgresCluster(bin_dir)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


def test_database_restart_mid_run(own_postgres: PostgresCluster, tmp_path):
    url = create_database(own_postgres.url("postgres"), "pinflow")
    home = tmp_path / "home"
    home.mkdir()
    cluster = Cluster(home, url, "postgresql", PINFLOW_HEARTBEAT_TIMEOUT="10")
    try:
        cluster.start(schedulers=1, workers=2)
        work = cluster.repo("dbr", tmp_path / "w")
        dag_id = f"dbr_{uuid.uuid4().hex[:6]}"
        cluster.push(work, "chain", **{"dags/chain.py": CHAIN.format(dag_id=dag_id, pause=1.0)})
        runs = [cluster.trigger(dag_id)["run_id"] for _ in range(4)]
        time.sleep(1.5)
        restarted = time.monotonic()
        own_postgres.restart()
        done = [cluster.wait(r, timeout=120) for r in runs]
        took = time.monotonic() - restarted
        succeeded = sum(d["state"] == "success" for d in done)
        report(
            "database restarted",
            backend="postgresql",
            runs=len(runs),
            succeeded=succeeded,
            seconds_to_all_done=round(took, 1),
        )
        assert succeeded == len(runs), cluster.logs()
        assert all(p.alive for p in cluster.schedulers + cluster.workers)
        # A run triggered after the restart works too: every part reconnected by itself.
        assert cluster.wait(cluster.trigger(dag_id)["run_id"])["state"] == "success"
    finally:
        cluster.stop()


# -- 4. one of two API servers killed for good ------------------------------------------------


def test_one_of_two_api_servers_killed_for_good(tmp_path):
    """Workers of the dead server can never report again: the heartbeat check hands their
    tasks to the workers of the other server; no run switches commit."""
    home = tmp_path / "home"
    home.mkdir()
    url = f"sqlite:///{home}/pinflow.db"
    cluster = Cluster(home, url, "sqlite", PINFLOW_HEARTBEAT_TIMEOUT="4")
    second = None
    try:
        cluster.start(schedulers=1, workers=0)
        assert cluster.server is not None
        (tmp_path / "home-b").mkdir()
        second = ServerProcess(
            home=tmp_path / "home-b",
            database_url=url,
            extra_env={"PINFLOW_REDIS_URL": cluster.redis.url},
        )
        second.tokens = cluster.tokens
        second.start()
        cluster.add_worker("doomed", api_url=cluster.server.url)
        cluster.add_worker("survivor", api_url=second.url)
        work = cluster.repo("two", tmp_path / "w")
        dag_id = "two_servers"
        sha = cluster.push(
            work, "chain", **{"dags/chain.py": CHAIN.format(dag_id=dag_id, pause=1.0)}
        )
        with second.api("trigger") as api:
            runs = [api.post(f"/dags/{dag_id}/runs", json={}).json()["run_id"] for _ in range(4)]
        time.sleep(1.5)
        killed = time.monotonic()
        cluster.server.stop()  # for good
        done = []
        for run_id in runs:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with second.api("read") as api:
                    run = api.get(f"/runs/{run_id}").json()
                if run["state"] in ("success", "failed"):
                    break
                time.sleep(0.2)
            done.append(run)
        took = time.monotonic() - killed
        retried = sum(len(t["tries"]) > 1 for run in done for t in run["tasks"])
        report(
            "one of two API servers killed for good",
            backend="sqlite",
            runs=len(runs),
            succeeded=sum(r["state"] == "success" for r in done),
            tasks_retried=retried,
            seconds_to_all_done=round(took, 1),
        )
        assert all(r["state"] == "success" and r["sha"] == sha for r in done), cluster.logs()
    finally:
        if second is not None:
            second.stop()
        cluster.stop()
