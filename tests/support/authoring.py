"""Runs of authored DAGs driven in-process: queue, claim and finish as workers would, with
outcomes the test chooses (trigger rules, branches, mapping and pools at the scheduler's level)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from dagstore.core.db import Database, db_time
from dagstore.core.models import Repo
from scheduler.limits import queue_limited
from scheduler.models import DagRun, TaskInstance
from scheduler.runs import create_run
from scheduler.taskstate import queue_ready, schedule_ready
from scheduler.tries import claim, finish


def task(task_id: str, *upstream: str, **options: Any) -> dict[str, Any]:
    return {"task_id": task_id, "upstream": list(upstream), "retries": 0, **options}


def make_run(
    db: Database, tasks: list[dict[str, Any]], dag_id: str = "authored", **dag: Any
) -> int:
    """A manual run of a structure with `tasks`; returns its primary key."""
    with db.write() as session:
        repo = session.scalar(select(Repo).where(Repo.name == "authored"))
        if repo is None:
            repo = Repo(name="authored", track="main", strict=False)
            session.add(repo)
            session.flush()
        now = db_time(session)
        run = create_run(session, dag_id=dag_id, repo_id=repo.id, sha="a" * 40,
                         fileloc="dags/a.py", structure={"tasks": tasks, **dag},
                         logical_date=now, run_type="manual", created_by="test")  # fmt: skip
        schedule_ready(session, run, now)
        return run.id


Outcome = bool | tuple[bool, Any]


def drive(
    db: Database, run_pk: int, outcome: Callable[[str, int, dict], Outcome] | None = None
) -> list[tuple[str, int]]:
    """Queue, claim and finish the run's tasks until nothing more is ready; `outcome(task_id,
    map_index, spec_like)` says success (and the result). Returns (task_id, map_index) in the
    order they ran."""
    ran = []
    while True:
        with db.write() as session:
            now = db_time(session)
            jobs = queue_ready(session, now, run_pk=run_pk) + queue_limited(session, now)
        if not jobs:
            return ran
        for job in jobs:
            with db.write() as session:
                row = claim(session, job.ti_id, job.try_number, "w", db_time(session))
                said = outcome(row.task_id, row.map_index, {}) if outcome else True
                ok, result = said if isinstance(said, tuple) else (said, None)
                finish(session, job.ti_id, job.try_number, ok, db_time(session), result=result,
                       error=None if ok else "it broke")  # fmt: skip
            ran.append((row.task_id, row.map_index))


def states(db: Database, run_pk: int) -> tuple[str, dict[str, str]]:
    """(the run's state, "task" or "task[i]" → state)."""
    with db.read() as session:
        run_state = session.scalar(select(DagRun.state).where(DagRun.id == run_pk))
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state).where(
                TaskInstance.run_pk == run_pk
            )
        )
        return str(run_state), {(t if i < 0 else f"{t}[{i}]"): s for t, i, s in rows}
