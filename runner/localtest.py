"""`pinflow dags test`: every task of one DAG, in order, in this process.

What Airflow users know as `airflow dags test`: no scheduler, no Redis, no worker, no database.
The DAG files come from a local checkout (found as the store finds them,
`dagstore.parsing.loader`) or from one version the store keeps (fetched and verified as a
worker fetches it). Each task runs through the worker's own code path (`runner.execute`: the
same import, upstream results, context and timeout), its output captured as a worker captures
it; trigger rules, branches and mapped tasks decide what runs as in a real run (skipped,
upstream_failed, one report per mapped instance). Retries are not made: a test run shows the
first try of each task, and a failure runs its on_failure callback at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dagstore.authoring.branching import skipped_by
from dagstore.authoring.dag import DAG
from dagstore.authoring.mapping import (
    MapCall,
    instance_count,
    lengths_of,
    map_call,
    max_map,
    structure_of,
)
from dagstore.authoring.rules import RUN, SKIP, decide
from dagstore.authoring.task import Task, TaskOutput
from dagstore.core.errors import NotFound
from dagstore.core.protocol import TaskSpec
from dagstore.parsing.loader import discover
from runner.capture import CappedLog, capture
from runner.execute import execute, run_on_failure
from runner.warm import WARM


@dataclass
class TaskReport:
    task_id: str
    state: str  # success, failed, upstream_failed or skipped
    seconds: float = 0.0
    result: Any = None
    error: str | None = None
    log: str = ""
    map_index: int = -1

    @property
    def label(self) -> str:
        return self.task_id if self.map_index < 0 else f"{self.task_id}[{self.map_index}]"


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
    """Each task's report (each mapped instance's), in the order they ran (upstream first).
    Trigger rules, branches and mapping decide as in a real run (`dagstore.authoring`)."""
    fileloc, dag = find_dag(root, sha, dag_id)
    run = _TestRun(root, sha, repo, dag_id, fileloc, conf, logical_date)
    below = {t.task_id: t.downstream_task_ids for t in dag.tasks.values()}
    skipped: set[str] = set()
    for task in dag.topological_order():
        ups = [state for u in sorted(task.upstream_task_ids) for state in run.states[u]]
        decision = SKIP if task.task_id in skipped else decide(task.trigger_rule, ups)
        if decision != RUN:
            state = "skipped" if decision == SKIP else "upstream_failed"
            yield run.record(TaskReport(task.task_id, state))
            continue
        calls = run.map_calls(task)
        if isinstance(calls, TaskReport):
            yield run.record(calls)
            continue
        reports = [run.execute(task, index, call) for index, call in calls]
        run.keep(task, reports)
        yield from reports
        if task.is_branch and reports[0].state == "success":
            skipped |= skipped_by(below, task.task_id, reports[0].result)


class _TestRun:
    """What a test run knows so far: each task's states and result."""

    def __init__(self, root: Path, sha: str, repo: str, dag_id: str, fileloc: str,
                 conf: dict[str, Any], logical_date: datetime) -> None:  # fmt: skip
        self.root, self.sha, self.repo, self.dag_id, self.fileloc = root, sha, repo, dag_id, fileloc
        self.conf, self.logical_date = conf, logical_date
        self.states: dict[str, list[str]] = {}
        self.results: dict[str, Any] = {}

    def record(self, report: TaskReport) -> TaskReport:
        self.states[report.task_id] = [report.state]
        return report

    def keep(self, task: Task, reports: list[TaskReport]) -> None:
        self.states[task.task_id] = [r.state for r in reports]
        results = [r.result for r in reports]
        self.results[task.task_id] = results if task.mapped is not None else results[0]

    def map_calls(self, task: Task) -> list[tuple[int, MapCall | None]] | TaskReport:
        """(map_index, call) per instance to run, or the report of a task that cannot map."""
        if task.mapped is None:
            return [(-1, None)]
        spec = structure_of(task.mapped, lambda v: v.task_id if isinstance(v, TaskOutput) else None)
        lengths = lengths_of(spec, self.results)
        if isinstance(lengths, str):
            return TaskReport(task.task_id, "failed", error=lengths)
        count = instance_count(lengths)
        if count == 0:
            return TaskReport(task.task_id, "skipped")
        if count > max_map():
            return TaskReport(task.task_id, "failed",
                              error=f"expand: {count} mapped instances, more than "
                              f"PINFLOW_MAX_MAP ({max_map()})")  # fmt: skip
        out: list[tuple[int, MapCall | None]] = []
        for index in range(count):
            values, where = map_call(spec, index, self.results)
            out.append((index, MapCall(values, where)))
        return out

    def execute(self, task: Task, map_index: int, call: MapCall | None) -> TaskReport:
        upstream = sorted(task.upstream_task_ids)
        spec = TaskSpec(
            ti_id=0, try_number=1, run_id=f"test__{self.logical_date.isoformat()}",
            dag_id=self.dag_id, task_id=task.task_id, repo=self.repo, sha=self.sha,
            fileloc=self.fileloc,
            logical_date=self.logical_date.isoformat().replace("+00:00", "Z"), conf=self.conf,
            timeout=task.timeout, upstream_results={u: self.results.get(u) for u in upstream},
            heartbeat_interval=0.0, map_index=map_index,
            map_values=dict(call.values) if call else {},
            map_positions=dict(call.positions) if call else {}, max_tries=1,
        )  # fmt: skip
        task_log = CappedLog()
        started = time.perf_counter()
        with capture(task_log):
            outcome = execute(spec, self.root)
            if not outcome.success:  # a test run makes no retries: this failure is final
                trouble = run_on_failure(spec, self.root, outcome.error or "failed")
                if trouble:
                    print(trouble)
        return TaskReport(
            task.task_id,
            "success" if outcome.success else "failed",
            time.perf_counter() - started,
            outcome.result,
            outcome.error,
            task_log.getvalue(),
            map_index,
        )


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
