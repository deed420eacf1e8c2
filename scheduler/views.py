"""JSON shapes of runs and task instances (DESIGN.md's field names)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dagstore.core.db import as_utc, iso
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
    """The DAG's `limit` latest runs by logical date, oldest first (a backfill of older dates
    lands where its dates are, not where it was created), each with its task instances: a
    grid in three bounded queries, whatever its size.

    Each run's `instances` are `(task_id, map_index, state, tries, seconds)`, one per task
    instance (`map_index` -1 for an unmapped one); `retried` says whether any task took more
    than one try, `shas` every commit its tries ran."""
    runs = session.scalars(
        select(DagRun)
        .where(DagRun.dag_id == dag_id)
        .order_by(DagRun.logical_date.desc(), DagRun.id.desc())
        .limit(limit)
    ).all()
    by_pk: dict[int, dict[str, Any]] = {
        run.id: {"run": run_json(run), "instances": [], "retried": False, "shas": [run.sha]}
        for run in runs
    }
    if not by_pk:
        return []
    # Core rows, not ORM ones: thousands of plain tuples, no identity map to feed.
    rows = session.connection().execute(
        select(
            TaskInstance.run_pk,
            TaskInstance.task_id,
            TaskInstance.map_index,
            TaskInstance.state,
            TaskInstance.try_number,
            TaskInstance.started_at,
            TaskInstance.ended_at,
        ).where(TaskInstance.run_pk.in_(list(by_pk)))
    )
    for run_pk, task_id, index, state, tries, started, ended in rows:
        column = by_pk[run_pk]
        column["instances"].append((task_id, index, state, tries, seconds_between(started, ended)))
        column["retried"] = column["retried"] or tries > 1
    ran = session.execute(
        select(TaskInstance.run_pk, TaskTry.sha)
        .join(TaskTry, TaskTry.ti_id == TaskInstance.id)
        .where(TaskInstance.run_pk.in_(list(by_pk)), TaskTry.sha.is_not(None))
        .distinct()
    )
    for run_pk, sha in ran:
        if sha not in by_pk[run_pk]["shas"]:
            by_pk[run_pk]["shas"].append(sha)
    return [by_pk[run.id] for run in reversed(runs)]


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    if (start.tzinfo is None) == (end.tzinfo is None):  # both from one database: no copies
        return (end - start).total_seconds()
    return (as_utc(end) - as_utc(start)).total_seconds()


def task_seconds(session: Session, dag_id: str, runs: int) -> dict[str, list[float]]:
    """task_id → how long its instances' last tries took, in the DAG's `runs` latest runs by
    logical date (finished ones only): what "slow" is judged against."""
    latest = (
        select(DagRun.id)
        .where(DagRun.dag_id == dag_id)
        .order_by(DagRun.logical_date.desc(), DagRun.id.desc())
        .limit(runs)
        .subquery()
    )
    rows = session.connection().execute(  # Core rows: thousands, no identity map needed
        select(TaskInstance.task_id, TaskInstance.started_at, TaskInstance.ended_at).where(
            TaskInstance.run_pk.in_(select(latest.c.id)),
            TaskInstance.started_at.is_not(None),
            TaskInstance.ended_at.is_not(None),
        )
    )
    out: dict[str, list[float]] = {}
    for task_id, started, ended in rows:
        seconds = seconds_between(started, ended)
        if seconds is not None:
            out.setdefault(task_id, []).append(seconds)
    return out


def list_runs(
    session: Session,
    *,
    dag_id: str | None = None,
    state: str | None = None,
    run_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Runs by logical date, latest first, filtered; at most `limit` of them."""
    query = select(DagRun).order_by(DagRun.logical_date.desc(), DagRun.id.desc()).limit(limit)
    if dag_id:
        query = query.where(DagRun.dag_id == dag_id)
    if state:
        query = query.where(DagRun.state == state)
    if run_type:
        query = query.where(DagRun.run_type == run_type)
    if since is not None:
        query = query.where(DagRun.logical_date >= since)
    if until is not None:
        query = query.where(DagRun.logical_date < until)
    return [run_json(run) for run in session.scalars(query)]


def tasks_json(session: Session, run: DagRun) -> list[dict[str, Any]]:
    tis = session.scalars(
        select(TaskInstance)
        .where(TaskInstance.run_pk == run.id)
        .order_by(TaskInstance.id)  # a mapped task's instances by map_index, at its place
    ).all()
    first = {}
    for ti in tis:
        first.setdefault(ti.task_id, ti.id)
    tis = sorted(tis, key=lambda ti: (first[ti.task_id], ti.map_index))
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
                "queued_at": iso(t.queued_at),
                "started_at": iso(t.started_at),
                "ended_at": iso(t.ended_at),
                "error": t.error,
            }
        )
    return [
        {
            "task_id": ti.task_id,
            "map_index": ti.map_index,
            "state": ti.state,
            "sha": ti.sha or run.sha,  # what its next (or current) try runs
            "try_number": ti.try_number,
            "max_tries": ti.max_tries,
            "upstream": ti.upstream,
            "trigger_rule": ti.trigger_rule or "all_success",
            "pool": ti.pool,
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
