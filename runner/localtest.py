"""`pinflow dags test`: every task of one DAG, in order, in this process.

What Airflow users know as `airflow dags test`: no scheduler, no Redis, no worker, no database.
The DAG files come from a local checkout (found as the store finds them,
`dagstore.parsing.loader`) or from one version the store keeps (fetched and verified as a
worker fetches it). Each task runs through the worker's own code path (`runner.execute`: the
same import, upstream results, context and timeout), its output captured as a worker captures
it; a task whose upstream did not succeed is `upstream_failed`, as in a real run. Retries are
not made: a test run shows the first try of each task.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dagstore.authoring.dag import DAG
from dagstore.core.errors import NotFound
from dagstore.core.protocol import TaskSpec
from dagstore.parsing.loader import discover
from runner.capture import CappedLog, capture
from runner.execute import execute
from runner.warm import WARM


@dataclass
class TaskReport:
    task_id: str
    state: str  # success, failed or upstream_failed
    seconds: float = 0.0
    result: Any = None
    error: str | None = None
    log: str = ""


def find_dag(root: Path, sha: str, dag_id: str) -> tuple[str, DAG]:
    """(file, DAG) of `dag_id` among the DAG files below `root`. A file that fails to import
    is skipped, as the store records it as an import error and goes on."""
    broken = []
    for rel in discover(root):
        try:
            dags = WARM.get(root, rel, sha)
        except Exception as exc:  # noqa: BLE001 - DAG code may raise anything
            broken.append(f"{rel}: {type(exc).__name__}: {exc}")
            continue
        for dag in dags:
            if dag.dag_id == dag_id:
                return rel, dag
    also = f"; files that failed to import: {'; '.join(broken)}" if broken else ""
    raise NotFound(f"no DAG {dag_id!r} in the DAG files below {root}{also}")


def run_dag(
    root: Path, sha: str, repo: str, dag_id: str, conf: dict[str, Any], logical_date: datetime
) -> Iterator[TaskReport]:
    """Each task's report, in the order they ran (upstream first)."""
    fileloc, dag = find_dag(root, sha, dag_id)
    run_id = f"test__{logical_date.isoformat()}"
    reports: dict[str, TaskReport] = {}
    for task in dag.topological_order():
        upstream = sorted(task.upstream_task_ids)
        if any(reports[u].state != "success" for u in upstream):
            reports[task.task_id] = TaskReport(task.task_id, "upstream_failed")
            yield reports[task.task_id]
            continue
        spec = TaskSpec(
            ti_id=0, try_number=1, run_id=run_id, dag_id=dag_id, task_id=task.task_id,
            repo=repo, sha=sha, fileloc=fileloc,
            logical_date=logical_date.isoformat().replace("+00:00", "Z"), conf=conf,
            timeout=task.timeout, upstream_results={u: reports[u].result for u in upstream},
            heartbeat_interval=0.0,
        )  # fmt: skip
        task_log = CappedLog()
        started = time.perf_counter()
        with capture(task_log):
            outcome = execute(spec, root)
        report = TaskReport(
            task.task_id,
            "success" if outcome.success else "failed",
            time.perf_counter() - started,
            outcome.result,
            outcome.error,
            task_log.getvalue(),
        )
        reports[task.task_id] = report
        yield report


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
