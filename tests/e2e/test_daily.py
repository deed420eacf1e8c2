"""The daily loop through the real CLI (issue 29, items 4 and 7): tables that never cut state,
ids or times; the try column after clears; the user's own frames in a task's traceback; a DAG
with no tasks warned of; every state in the metrics; `--version`, `--help` and OpenAPI ids.
Real server, scheduler, worker and Redis on SQLite; the CLI as a subprocess.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scheduler.runs import ACTIVE_RUN_STATES
from scheduler.taskstate import MOVING
from tests.conftest import cluster_for
from tests.e2e.test_operate import cli_env
from tests.support.cluster import Cluster
from tests.support.server import PINFLOW

DAILY = """
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task
    def transform_the_rows():
        return 1

    @task
    def check_the_rows(n):
        if n != 2:
            raise ValueError("expected 2 rows, got " + str(n))

    check_the_rows(transform_the_rows())
"""

EMPTY = """
from pinflow import DAG

with DAG("{dag_id}", schedule=None):
    pass
"""


@pytest.fixture(scope="module", params=["sqlite"])
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    yield from cluster_for(request, tmp_path_factory)


def cli(
    cluster: Cluster, *args: str, columns: int = 80, scope: str = "admin"
) -> subprocess.CompletedProcess[str]:
    env = {**cli_env(cluster, scope), "COLUMNS": str(columns)}
    return subprocess.run([PINFLOW, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def failed_run(cluster: Cluster, tmp_path_factory) -> str:
    """A run whose check failed, its first task cleared three times since."""
    dag_id = "daily_report_of_the_rows"
    work = cluster.repo("daily", tmp_path_factory.mktemp("w"))
    cluster.push(work, "daily", **{"dags/daily.py": DAILY.format(dag_id=dag_id)})
    run_id = cluster.trigger(dag_id)["run_id"]
    assert cluster.wait(run_id)["state"] == "failed"
    for _ in range(3):
        cleared = cli(cluster, "clear", run_id, "--task", "transform_the_rows", "--wait")
        assert cleared.returncode == 1, cleared.stderr  # check_the_rows stays failed
    return run_id


def test_tables_never_cut_state_ids_or_times(cluster: Cluster, failed_run: str):
    runs = cli(cluster, "runs", "-o", "table", columns=80)
    assert runs.returncode == 0, runs.stderr
    assert "…" not in runs.stdout, runs.stdout
    assert failed_run in runs.stdout and "failed" in runs.stdout
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", runs.stdout), runs.stdout
    # The run id alone is 61 characters: dag, sha and created by were left out for it.
    assert "created by" not in runs.stdout and "sha" not in runs.stdout

    one = cli(cluster, "run", failed_run, "-o", "table", columns=100)
    assert one.returncode == 0, one.stderr
    assert "…" not in one.stdout, one.stdout
    for whole in ("transform_the_rows", "check_the_rows", "success", "failed"):
        assert whole in one.stdout, one.stdout
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", one.stdout), one.stdout


def test_the_try_column_counts_since_the_last_clear(cluster: Cluster, failed_run: str):
    shown = cli(cluster, "run", failed_run, "-o", "plain").stdout
    (row,) = [line for line in shown.splitlines() if line.startswith("transform_the_rows")]
    assert "4 (1/1 since clear)" in row and "4/4" not in row, shown
    (check,) = [line for line in shown.splitlines() if line.startswith("check_the_rows")]
    assert " 1/1 " in check  # never cleared: try 1 of 1


def test_a_tasks_traceback_starts_in_the_users_code(cluster: Cluster, failed_run: str):
    log = cli(cluster, "logs", failed_run, "check_the_rows", "--try", "1", scope="read")
    assert log.returncode == 0, log.stderr
    assert 'File "dags/daily.py", line' in log.stdout, log.stdout
    assert "ValueError: expected 2 rows, got 1" in log.stdout
    for pinflows in ("runner/execute.py", "authoring/task.py", "site-packages", "/work/"):
        assert pinflows not in log.stdout, log.stdout
    verbose = cli(
        cluster, "logs", failed_run, "check_the_rows", "--try", "1", "--verbose", scope="read"
    )
    assert verbose.returncode == 0, verbose.stderr
    assert "runner/execute.py" in verbose.stdout and "whole error" in verbose.stdout


def test_a_dag_with_no_tasks_is_warned_of(cluster: Cluster, tmp_path: Path):
    work = cluster.repo("empty", tmp_path / "w")
    work.write("dags/empty.py", EMPTY.format(dag_id="does_nothing"))
    work.commit("empty")
    pushed = work.run("push", work.remote, "main")  # type: ignore[attr-defined]
    assert "warning: DAG 'does_nothing' has no tasks" in pushed.stderr, pushed.stderr
    errors = cli(cluster, "dags", "--errors", scope="read")
    assert errors.returncode == 0, errors.stderr
    assert "warning: DAG 'does_nothing' (empty " in errors.stderr, errors.stderr
    assert "has no tasks" in errors.stderr


def test_metrics_hold_every_state_even_at_zero(cluster: Cluster, failed_run: str):
    """Every series a dashboard sums is there, at 0 when nothing is in it: the gauges of the
    active states (issue 33 keeps finished history out of a scrape) and the counter of runs
    ended by each final state."""
    assert cluster.server is not None
    text = httpx.get(f"{cluster.server.url}/metrics", timeout=30).text
    for family, states in (
        ("pinflow_dag_runs", ACTIVE_RUN_STATES),
        ("pinflow_task_instances", ("none", *MOVING)),
        ("pinflow_dag_runs_finished_total", ("success", "failed", "canceled")),
    ):
        for state in states:
            assert re.search(rf'^{family}{{state="{state}"}} \d', text, re.M), (family, state)
    assert re.search(r'^pinflow_dag_runs{state="running"} 0\.0$', text, re.M)


def test_version_and_help():
    version = subprocess.run([PINFLOW, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and re.fullmatch(r"pinflow \d+\.\d+\.\d+\n", version.stdout)
    for args in ((), ("trigger",), ("logs",)):
        shown = subprocess.run(
            [PINFLOW, *args, "--help"], capture_output=True, text=True, env={"COLUMNS": "120"}
        )
        assert shown.returncode == 0 and "--help" in shown.stdout, shown.stderr
        assert "<bool>" not in shown.stdout, shown.stdout


def test_openapi_operation_ids_are_a_clients_method_names(cluster: Cluster):
    assert cluster.server is not None
    schema = httpx.get(f"{cluster.server.url}/openapi.json", timeout=30).json()
    ids = {
        (method, path): operation["operationId"]
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    }
    assert len(set(ids.values())) == len(ids)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", i) for i in ids.values()), ids
    assert ids["get", "/api/v1/dags"] == "list_dags"
    assert ids["post", "/api/v1/dags/{dag_id}/runs"] == "trigger_run"
    assert ids["get", "/api/v1/runs/{run_id}"] == "get_run"
    archive = schema["paths"]["/api/v1/repos/{repo}/archive/{sha}.tar.gz"]["get"]
    assert archive["operationId"] == "download_archive"
    assert archive["responses"]["200"]["content"] == {
        "application/gzip": {"schema": {"type": "string", "format": "binary"}}
    }
