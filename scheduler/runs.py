"""Creating DAG runs, each pinned to one commit, with a task instance per task."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.models import DagRun, TaskInstance

ACTIVE_RUN_STATES = ("queued", "running")
RUN_STATES = ("queued", "running", "success", "failed", "canceled")
KEYED_RUN_TYPES = ("scheduled", "backfill")  # runs that stand for a schedule tick


def make_run_id(run_type: str, logical_date: datetime) -> str:
    stamp = logical_date.strftime("%Y-%m-%dT%H:%M:%S")
    if run_type in KEYED_RUN_TYPES:  # one run per tick: the stamp is unique
        return f"{run_type}__{stamp}"
    return f"manual__{stamp}__{secrets.token_hex(3)}"


def run_row(
    *,
    dag_id: str,
    repo_id: int,
    sha: str,
    fileloc: str,
    logical_date: datetime,
    run_type: str,
    created_by: str,
    conf: dict[str, Any] | None = None,
    structure: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The columns of a new run: one definition for a single run and for a batch of them.
    `structure` (the pinned DAG's) gives the run its limits."""
    structure = structure or {}
    return {
        "run_id": f"{dag_id}__{make_run_id(run_type, logical_date)}",
        "dag_id": dag_id,
        "repo_id": repo_id,
        "sha": sha,
        "fileloc": fileloc,
        "logical_date": logical_date,
        "scheduled_key": logical_date.isoformat() if run_type in KEYED_RUN_TYPES else None,
        "run_type": run_type,
        "created_by": created_by,
        "state": "queued",
        "conf": conf or {},
        "max_active_tasks": structure.get("max_active_tasks"),
        "dagrun_timeout": structure.get("dagrun_timeout"),
    }


def task_rows(run_pk: int, structure: dict[str, Any]) -> list[dict[str, Any]]:
    """The columns of a new run's task instances, all in state `none`."""
    return [
        {
            "run_pk": run_pk,
            "task_id": task["task_id"],
            "upstream": list(task.get("upstream") or []),
            "state": "none",
            "try_number": 0,
            "max_tries": int(task.get("retries") or 0) + 1,
            "retries": int(task.get("retries") or 0),
            "retry_delay": float(task.get("retry_delay") or 0.0),
            "timeout": task.get("timeout"),
            "queue": task.get("queue") or "default",
            "trigger_rule": task.get("trigger_rule"),
            "pool": task.get("pool"),
            "branch": bool(task.get("branch")),
            "map_index": -1,
            "map_spec": task.get("mapped"),
        }
        for task in structure.get("tasks", [])
    ]


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
        **run_row(
            dag_id=dag_id,
            repo_id=repo_id,
            sha=sha,
            fileloc=fileloc,
            logical_date=logical_date,
            run_type=run_type,
            created_by=created_by,
            conf=conf,
            structure=structure,
        )
    )
    session.add(run)
    session.flush()
    session.add_all(TaskInstance(**row) for row in task_rows(run.id, structure))
    session.flush()
    return run


def active_runs(session: Session, dag_id: str) -> int:
    return active_runs_of(session, [dag_id]).get(dag_id, 0)


def active_runs_of(session: Session, dag_ids: list[str]) -> dict[str, int]:
    """dag_id → how many of its runs are active (held backfill runs are not), in one query."""
    rows = session.execute(
        select(DagRun.dag_id, func.count())
        .where(DagRun.dag_id.in_(dag_ids), DagRun.state.in_(ACTIVE_RUN_STATES), ~DagRun.held)
        .group_by(DagRun.dag_id)
    )
    return {dag_id: count for dag_id, count in rows}


def taken_ticks(session: Session, dag_id: str, keys: list[str]) -> dict[str, str]:
    """scheduled_key → run_id of the ticks among `keys` that have a (scheduled or backfill)
    run already."""
    taken = taken_ticks_of(session, {dag_id: keys})
    return {key: run_id for (_, key), run_id in taken.items()}


def taken_ticks_of(session: Session, wanted: dict[str, list[str]]) -> dict[tuple[str, str], str]:
    """(dag_id, scheduled_key) → run_id for the ticks in `wanted` (dag_id → keys) that have a
    run already: one query for a whole batch of DAGs."""
    keys = sorted({key for dag_keys in wanted.values() for key in dag_keys})
    if not keys:
        return {}
    rows = session.execute(
        select(DagRun.dag_id, DagRun.scheduled_key, DagRun.run_id).where(
            DagRun.dag_id.in_(list(wanted)), DagRun.scheduled_key.in_(keys)
        )
    )
    return {(dag_id, key): run_id for dag_id, key, run_id in rows if key in wanted.get(dag_id, ())}
