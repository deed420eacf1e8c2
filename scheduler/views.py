"""JSON shapes of runs and task instances (DESIGN.md's field names)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dagstore.db import iso
from dagstore.errors import NotFound
from scheduler.models import DagRun, TaskInstance, TaskTry


def get_run(session: Session, run_id: str) -> DagRun:
    run = session.scalar(select(DagRun).where(DagRun.run_id == run_id))
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
