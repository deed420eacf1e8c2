"""Rows as the store and the scheduler leave them, for scheduler tests that need no push."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from dagstore.core.db import Database, db_time
from dagstore.core.models import Dag, Repo
from scheduler.backfill import create_backfill
from scheduler.models import DagRun, TaskInstance
from scheduler.runs import create_run
from scheduler.taskstate import queue_ready, schedule_ready
from scheduler.tries import claim


def insert_dags(db: Database, repo_name: str, structures: dict[str, dict]) -> None:
    """DAG rows as the store would leave them after parsing, without a push."""
    with db.write() as session:
        repo = Repo(name=repo_name, track="main", strict=False)
        session.add(repo)
        session.flush()
        session.add_all(
            Dag(
                dag_id=dag_id,
                repo_id=repo.id,
                fileloc="dags/d.py",
                current_sha="a" * 40,
                structure={**structure, "dag_id": dag_id},
                structure_hash="h",
                schedule=structure["schedule"],
                is_active=True,
                is_paused=False,
            )
            for dag_id, structure in structures.items()
        )


def daily(start: datetime, max_active_runs: int = 16) -> dict:
    return {
        "schedule": "@daily",
        "catchup": True,
        "start_date": start.isoformat(),
        "end_date": None,
        "max_active_runs": max_active_runs,
        "tasks": [{"task_id": "only", "upstream": [], "retries": 0}],
    }


def every(seconds: int, start: datetime, max_active_runs: int = 100_000) -> dict:
    return {**daily(start, max_active_runs), "schedule": f"timedelta:{seconds}"}


def running_run(
    db: Database, tasks: dict[str, list[str]], retries: int = 0, claimed: bool = True
) -> int:
    """A manual run of `tasks` (task id → upstream ids) whose root tasks are queued and, if
    `claimed`, claimed by a worker; returns the run's primary key."""

    with db.write() as session:
        repo = session.scalar(select(Repo).where(Repo.name == "seeded-runs"))
        if repo is None:
            repo = Repo(name="seeded-runs", track="main", strict=False)
            session.add(repo)
            session.flush()
        now = db_time(session)
        structure = {
            "tasks": [{"task_id": t, "upstream": up, "retries": retries} for t, up in tasks.items()]
        }
        run = create_run(
            session,
            dag_id="seeded",
            repo_id=repo.id,
            sha="a" * 40,
            fileloc="dags/seeded.py",
            structure=structure,
            logical_date=now,
            run_type="manual",
            created_by="test",
        )
        schedule_ready(session, run, now)
        for job in queue_ready(session, now, run_pk=run.id):
            if claimed:
                claim(session, job.ti_id, job.try_number, "w", now)
        return run.id


def ti_id(db: Database, run_pk: int, task_id: str) -> int:
    with db.read() as session:
        found = session.scalar(
            select(TaskInstance.id).where(
                TaskInstance.run_pk == run_pk, TaskInstance.task_id == task_id
            )
        )
    assert found is not None
    return found


def run_states(db: Database, run_pk: int) -> tuple[str, dict[str, str]]:
    """(the run's state, task id → state)."""
    with db.read() as session:
        state = session.scalar(select(DagRun.state).where(DagRun.id == run_pk))
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.state).where(TaskInstance.run_pk == run_pk)
        )
        return str(state), {task: task_state for task, task_state in rows}


def run_id_of(db: Database, run_pk: int) -> str:
    with db.read() as session:
        found = session.scalar(select(DagRun.run_id).where(DagRun.id == run_pk))
    assert found is not None
    return found


@dataclass(frozen=True)
class Backfilled:
    id: int
    runs: list[int]  # run primary keys, oldest tick first


def held_backfill(db: Database, dag_id: str, days: int, max_active_runs: int) -> Backfilled:
    """A backfill of `days` daily ticks of a one-task DAG (in a repo of its own), as
    `create_backfill` leaves it: every run held, none released yet."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    insert_dags(db, f"repo-{dag_id}", {dag_id: daily(start)})
    with db.write() as session:
        dag = session.scalar(select(Dag).where(Dag.dag_id == dag_id))
        assert dag is not None
        made = create_backfill(
            session, dag_id, dag.current_sha or "", dag.fileloc, dag.structure,
            start, start + timedelta(days=days - 1), max_active_runs, "test",
        )  # fmt: skip
        pks = dict(session.execute(select(DagRun.run_id, DagRun.id)).all())
        return Backfilled(made.backfill.id, [pks[run_id] for run_id in made.created])
