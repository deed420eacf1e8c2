"""JSON shapes of runs and task instances (DESIGN.md's field names)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dagstore.core.db import iso
from dagstore.core.errors import NotFound
from scheduler.models import DagRun, TaskInstance, TaskTry


def get_run(session: Session, run_id: str, lock: bool = False) -> DagRun:
    """The run; with `lock`, locked against every other change to it (in the order of
    `scheduler.locks`) and read afresh."""
    query = select(DagRun).where(DagRun.run_id == run_id)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    run = session.scalar(query)
    if run is None:
        raise NotFound(f"run {run_id!r} does not exist")
    return run


def run_json(run: DagRun, tasks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "run_id": run.run_id,
        "dag_id": run.dag_id,
        "logical_date": iso(run.logical_date),
        "sha": run.sha,
        "state": run.state,
        "conf": run.conf or {},
        "run_type": run.run_type,
        "held": bool(run.held),
        "created_by": run.created_by,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "ended_at": iso(run.ended_at),
    }
    if tasks is not None:
        body["tasks"] = tasks
        # Every commit a try of this run ran: more than one after a clear "on latest".
        ran = [t["sha"] for task in tasks for t in task["tries"]]
        body["shas"] = list(dict.fromkeys(ran or [run.sha]))
    return body


def recent_runs(session: Session, dag_ids: list[str], per_dag: int) -> dict[str, list[dict]]:
    """The newest `per_dag` runs of each DAG, newest first, in one query (a window)."""
    newest = (
        func.row_number().over(partition_by=DagRun.dag_id, order_by=DagRun.id.desc()).label("n")
    )
    ranked = select(DagRun.id, newest).where(DagRun.dag_id.in_(dag_ids)).subquery()
    runs = session.scalars(
        select(DagRun)
        .join(ranked, ranked.c.id == DagRun.id)
        .where(ranked.c.n <= per_dag)
        .order_by(DagRun.id.desc())
    )
    out: dict[str, list[dict]] = {dag_id: [] for dag_id in dag_ids}
    for run in runs:
        out[run.dag_id].append(run_json(run))
    return out


def run_grid(session: Session, dag_id: str, limit: int) -> list[dict[str, Any]]:
    """The DAG's newest `limit` runs, oldest first, each with its tasks' states: a grid in
    two queries, whatever its size."""
    runs = session.scalars(
        select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(limit)
    ).all()
    states: dict[int, dict[str, str]] = {run.id: {} for run in runs}
    rows = session.execute(
        select(TaskInstance.run_pk, TaskInstance.task_id, TaskInstance.state).where(
            TaskInstance.run_pk.in_(list(states))
        )
    )
    for run_pk, task_id, state in rows:
        states[run_pk][task_id] = state
    return [{"run": run_json(run), "states": states[run.id]} for run in reversed(runs)]


def tasks_json(session: Session, run: DagRun) -> list[dict[str, Any]]:
    tis = session.scalars(
        select(TaskInstance).where(TaskInstance.run_pk == run.id).order_by(TaskInstance.id)
    ).all()
    tries: dict[int, list[dict[str, Any]]] = {ti.id: [] for ti in tis}
    for t in session.scalars(
        select(TaskTry).where(TaskTry.ti_id.in_(list(tries))).order_by(TaskTry.try_number)
    ):
        tries[t.ti_id].append(
            {
                "try_number": t.try_number,
                "state": t.state,
                "sha": t.sha or run.sha,
                "worker": t.worker,
                "started_at": iso(t.started_at),
                "ended_at": iso(t.ended_at),
                "error": t.error,
            }
        )
    return [
        {
            "task_id": ti.task_id,
            "state": ti.state,
            "sha": ti.sha or run.sha,  # what its next (or current) try runs
            "try_number": ti.try_number,
            "max_tries": ti.max_tries,
            "retries": ti.retries,
            "upstream": ti.upstream,
            "worker": ti.worker,
            "queued_at": iso(ti.queued_at),
            "started_at": iso(ti.started_at),
            "ended_at": iso(ti.ended_at),
            "result": ti.result,
            "error": ti.error,
            "tries": tries[ti.id],
        }
        for ti in tis
    ]
