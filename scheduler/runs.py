"""Creating DAG runs, each pinned to one commit, with a task instance per task."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dagstore.models import Dag
from scheduler.models import DagRun, TaskInstance

ACTIVE_RUN_STATES = ("queued", "running")
RUN_STATES = ("queued", "running", "success", "failed", "canceled")
KEYED_RUN_TYPES = ("scheduled", "backfill")  # runs that stand for a schedule tick


def make_run_id(run_type: str, logical_date: datetime) -> str:
    stamp = logical_date.strftime("%Y-%m-%dT%H:%M:%S")
    if run_type in KEYED_RUN_TYPES:  # one run per tick: the stamp is unique
        return f"{run_type}__{stamp}"
    return f"manual__{stamp}__{secrets.token_hex(3)}"


def create_run(
    session: Session,
    *,
    dag_id: str,
    repo_id: int,
    sha: str,
    fileloc: str,
    structure: dict[str, Any],
    logical_date: datetime,
    run_type: str,
    created_by: str,
    conf: dict[str, Any] | None = None,
) -> DagRun:
    """A run of `structure` (the DAG as commit `sha` defines it) and its task instances."""
    run = DagRun(
        run_id=f"{dag_id}__{make_run_id(run_type, logical_date)}",
        dag_id=dag_id,
        repo_id=repo_id,
        sha=sha,
        fileloc=fileloc,
        logical_date=logical_date,
        scheduled_key=logical_date.isoformat() if run_type in KEYED_RUN_TYPES else None,
        run_type=run_type,
        created_by=created_by,
        state="queued",
        conf=conf or {},
    )
    session.add(run)
    session.flush()
    session.add_all(
        TaskInstance(
            run_pk=run.id,
            task_id=task["task_id"],
            upstream=list(task.get("upstream") or []),
            state="none",
            try_number=0,
            max_tries=int(task.get("retries") or 0) + 1,
            retries=int(task.get("retries") or 0),
            retry_delay=float(task.get("retry_delay") or 0.0),
            timeout=task.get("timeout"),
            queue=task.get("queue") or "default",
        )
        for task in structure.get("tasks", [])
    )
    session.flush()
    return run


def active_runs(session: Session, dag_id: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(DagRun)
            .where(DagRun.dag_id == dag_id, DagRun.state.in_(ACTIVE_RUN_STATES), ~DagRun.held)
        )
        or 0
    )


def taken_ticks(session: Session, dag_id: str, keys: list[str]) -> dict[str, str]:
    """scheduled_key → run_id of the ticks among `keys` that have a (scheduled or backfill)
    run already."""
    rows = session.execute(
        select(DagRun.scheduled_key, DagRun.run_id).where(
            DagRun.dag_id == dag_id, DagRun.scheduled_key.in_(keys)
        )
    )
    return {key: run_id for key, run_id in rows}


def create_scheduled_runs(
    session: Session, dag: Dag, logical_dates: list[datetime], scheduler: str
) -> list[DagRun]:
    """Scheduled runs pinned to the DAG's current version; the unique key refuses repeats.
    Ticks a backfill has run already are left out (the caller holds the DAG row's lock)."""
    taken = taken_ticks(session, dag.dag_id, [d.isoformat() for d in logical_dates])
    return [
        create_run(
            session,
            dag_id=dag.dag_id,
            repo_id=dag.repo_id,
            sha=dag.current_sha or "",
            fileloc=dag.fileloc,
            structure=dag.structure,
            logical_date=logical_date,
            run_type="scheduled",
            created_by=f"scheduler:{scheduler}",
        )
        for logical_date in logical_dates
        if logical_date.isoformat() not in taken
    ]
