"""History at scale on real processes (issue 33): a long log keeps its tail through the
worker, heartbeats and the API; old history is cleaned by the scheduler and by `pinflow db
clean` while runs go on."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dagstore.core.db import Database
from scheduler.models import DagRun, TaskInstance, TaskTry
from tests.conftest import BACKENDS, cluster_for
from tests.support.cluster import Cluster
from tests.support.history import HistorySpec, load_history
from tests.support.server import PINFLOW, pinflow_env

CAP = 64 * 1024


@pytest.fixture(scope="module", params=BACKENDS)
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    yield from cluster_for(
        request, tmp_path_factory, schedulers=1, workers=2,
        PINFLOW_TASK_LOG_MAX_BYTES=str(CAP), PINFLOW_CLEAN_OLDER_THAN="90d",
        PINFLOW_CLEAN_EVERY="1",
    )  # fmt: skip


NOISY = """
import sys, time
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task
    def noisy():
        for n in range(20000):
            print(f"line {{n}}: a row processed, nothing to see")
        sys.stdout.flush()
        time.sleep({pause})
        raise ValueError("row 19999 was bad: the reason is at the end")
    noisy()
"""


def test_a_long_log_keeps_its_tail(cluster: Cluster, tmp_path: Path, uid: str) -> None:
    """20,000 lines (~800 KB) and a failure, with a 64 KiB cap: the log, followed while the
    task runs and read after it failed, has its first lines, a marker saying what was cut,
    and the traceback. (Before: the first 1 MiB only, the traceback lost.)"""
    dag_id = f"noisy_{uid}"
    work = cluster.repo(f"noisy{uid}", tmp_path / "w")
    cluster.push(work, "noisy", **{"dags/noisy.py": NOISY.format(dag_id=dag_id, pause=4)})
    run_id = cluster.trigger(dag_id)["run_id"]
    cluster.wait_task(run_id, "noisy", "running")
    deadline = time.monotonic() + 30
    live = ""
    while "line 19999" not in live and time.monotonic() < deadline:
        live = cluster.task_log(run_id, "noisy")  # shipped with heartbeats while it runs
        time.sleep(0.2)
    assert "line 0: a row" in live and "line 19999" in live, live[-500:]
    assert "bytes cut here" in live
    assert cluster.wait(run_id)["state"] == "failed"
    with cluster.api("read") as api:
        response = api.get(f"/runs/{run_id}/tasks/noisy/logs")
    text = response.text
    assert "line 0: a row" in text and "bytes cut here" in text
    assert "ValueError: row 19999 was bad: the reason is at the end" in text[-3000:]
    assert len(text.encode()) <= CAP + 300
    assert int(response.headers["X-Pinflow-Log-Bytes"]) > 20000 * 40
    # A follower that had the first bytes gets the marker and the tail, not the cut bytes.
    with cluster.api("read") as api:
        rest = api.get(f"/runs/{run_id}/tasks/noisy/logs", params={"offset": 100}).text
    assert rest.index("bytes cut here") < rest.index("ValueError")


ONE_TASK = """
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task
    def hi():
        return 1
    hi()
"""


def _history_left(db: Database, dag_id: str, loaded_from: int, loaded_to: int) -> int:
    with db.read() as session:
        return (
            session.scalar(
                select(func.count()).where(
                    DagRun.dag_id == dag_id, DagRun.id.between(loaded_from, loaded_to)
                )
            )
            or 0
        )


def test_history_cleaned_while_runs_go_on(cluster: Cluster, tmp_path: Path, uid: str) -> None:
    """A year-old history loaded under a running cluster whose scheduler cleans every second
    (PINFLOW_CLEAN_OLDER_THAN=90d), `pinflow db clean` run at the same time: the runs
    triggered meanwhile all succeed, every old run goes with its tasks and tries, and the
    DAG's newest run stays."""
    dag_id = f"hist_{uid}"
    work = cluster.repo(f"hist{uid}", tmp_path / "w")
    cluster.push(work, "one", **{"dags/one.py": ONE_TASK.format(dag_id=dag_id)})
    db = Database(cluster.database_url)
    try:
        loaded = load_history(
            db, [dag_id], HistorySpec(task_instances=10_000, days=270, newest_days_ago=95)
        )
        env = pinflow_env(tmp_path, cluster.database_url)
        cleans: list[subprocess.CompletedProcess[str]] = []

        def clean() -> None:
            cleans.append(subprocess.run(
                [PINFLOW, "db", "clean", "--older-than", "90d", "--batch", "100"],
                env=env, capture_output=True, text=True, timeout=300,
            ))  # fmt: skip

        cleaner = threading.Thread(target=clean)
        cleaner.start()
        runs = [cluster.trigger(dag_id)["run_id"] for _ in range(4)]
        assert [cluster.wait(r)["state"] for r in runs] == ["success"] * 4, cluster.logs()
        cleaner.join()
        assert cleans[0].returncode == 0, cleans[0].stderr
        assert cleans[0].stdout.startswith("deleted ")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = _history_left(db, dag_id, loaded.first_run_pk, loaded.last_run_pk)
            if left == 0:
                break
            time.sleep(0.5)
        assert left == 0, cluster.logs()
        with db.read() as session:
            orphans = session.scalar(
                select(func.count()).where(~TaskTry.ti_id.in_(select(TaskInstance.id)))
            )
        assert orphans == 0
        assert [cluster.run(r)["state"] for r in runs] == ["success"] * 4
        assert not any("Traceback" in s.log() for s in cluster.schedulers)
    finally:
        db.dispose()
