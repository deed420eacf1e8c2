"""The bounded queries behind the UI's grid, runs list and Gantt (issue 30)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from dagstore.core.db import Database, as_utc
from dagstore.core.models import Repo
from scheduler.models import TaskInstance, TaskTry
from scheduler.runs import create_run
from scheduler.views import list_runs, run_grid, task_seconds
from tests.support.seed import running_run

DAY = datetime(2026, 12, 1, tzinfo=UTC)
STRUCTURE = {"tasks": [{"task_id": "a", "upstream": []}, {"task_id": "b", "upstream": ["a"]}]}


def make_runs(db: Database, dag_id: str, days: list[int], run_type: str = "manual") -> None:
    """Runs of `dag_id` created in the order given, for logical dates DAY + each day."""
    with db.write() as session:
        repo = session.scalar(select(Repo).where(Repo.name == "views"))
        if repo is None:
            repo = Repo(name="views", track="main", strict=False)
            session.add(repo)
            session.flush()
        for day in days:
            create_run(
                session,
                dag_id=dag_id,
                repo_id=repo.id,
                sha=f"{day:040x}",
                fileloc="dags/d.py",
                structure=STRUCTURE,
                logical_date=DAY + timedelta(days=day),
                run_type=run_type,
                created_by="test",
            )


def test_the_grid_orders_runs_by_logical_date_not_creation(db: Database):
    """A backfill of older dates, created after December's runs, lands before them (the
    grid used to order by creation: a November backfill came after December and the
    commit-change marks fired between unrelated neighbours)."""
    make_runs(db, "g", [0, 1, 2])
    make_runs(db, "g", [-30, -29], run_type="backfill")
    with db.read() as session:
        grid = run_grid(session, "g", 25)
        newest_three = run_grid(session, "g", 3)
    dates = [col["run"]["logical_date"] for col in grid]
    assert dates == sorted(dates) and len(dates) == 5
    assert [c["run"]["run_type"] for c in grid] == ["backfill"] * 2 + ["manual"] * 3
    # The limit keeps the latest logical dates, not the latest created.
    assert [c["run"]["logical_date"][:10] for c in newest_three] == [
        "2026-12-01",
        "2026-12-02",
        "2026-12-03",
    ]
    first = grid[0]
    assert {(i[0], i[1], i[2]) for i in first["instances"]} == {
        ("a", -1, "none"),
        ("b", -1, "none"),
    }
    assert first["retried"] is False and first["shas"] == [first["run"]["sha"]]


def test_runs_list_filters(db: Database):
    make_runs(db, "f", [0, 1])
    make_runs(db, "f", [-10], run_type="backfill")
    make_runs(db, "other", [5])
    with db.read() as session:
        everything = list_runs(session, limit=10)
        backfills = list_runs(session, dag_id="f", run_type="backfill")
        window = list_runs(session, since=DAY, until=DAY + timedelta(days=1))
        none = list_runs(session, state="failed")
        one = list_runs(session, limit=1)
    assert [r["logical_date"][:10] for r in everything] == [
        "2026-12-06",
        "2026-12-02",
        "2026-12-01",
        "2026-11-21",
    ]
    assert [r["run_type"] for r in backfills] == ["backfill"]
    assert [r["logical_date"][:10] for r in window] == ["2026-12-01"]
    assert none == [] and len(one) == 1


def test_a_try_keeps_when_it_was_queued(db: Database):
    """Each try records its queued time at claim: the Gantt draws queued → started → ended."""
    run_pk = running_run(db, {"a": [], "b": ["a"]})
    with db.read() as session:
        ti = session.scalar(
            select(TaskInstance).where(TaskInstance.run_pk == run_pk, TaskInstance.task_id == "a")
        )
        entry = session.scalar(select(TaskTry).where(TaskTry.ti_id == ti.id))
        assert entry.queued_at is not None
        assert as_utc(entry.queued_at) == as_utc(ti.queued_at) <= as_utc(entry.started_at)
        assert task_seconds(session, "seeded", 25) == {}  # nothing has ended yet


def test_durations_are_counted_by_the_database(db: Database):
    """The grid's and the Gantt's seconds come from the database (julianday on SQLite, epoch
    on PostgreSQL): the same figure as the timestamps' difference, to the millisecond."""
    make_runs(db, "d", [0, 1])
    took = {"a": 1.5, "b": 3723.25}  # a second and a half; an hour, two minutes and a bit
    with db.write() as session:
        for ti in session.scalars(select(TaskInstance)).all():
            start = DAY + timedelta(hours=ti.run_pk)
            ti.state, ti.started_at = "success", start
            ti.ended_at = start + timedelta(seconds=took[ti.task_id])
    with db.read() as session:
        grid = run_grid(session, "d", 25)
        usual = task_seconds(session, "d", 25)
    for column in grid:
        seconds = {task: s for task, _, _, _, s in column["instances"]}
        assert seconds == pytest.approx(took, abs=1e-3)
    assert usual == {t: pytest.approx([s, s], abs=1e-3) for t, s in took.items()}


def test_the_grid_knows_a_run_whose_tries_ran_two_commits(db: Database):
    """After a clear "on latest" a run's tries ran two commits: its column says which (the
    ⇄ mark), and that a task was retried (↻)."""
    run_pk = running_run(db, {"a": [], "b": ["a"]})
    with db.write() as session:
        ti = session.scalar(
            select(TaskInstance).where(TaskInstance.run_pk == run_pk, TaskInstance.task_id == "a")
        )
        ti.try_number = 2
        session.add(TaskTry(ti_id=ti.id, try_number=2, state="running", sha="b" * 40))
    with db.read() as session:
        (column,) = run_grid(session, "seeded", 25)
    assert column["shas"] == [column["run"]["sha"], "b" * 40] and column["retried"] is True
