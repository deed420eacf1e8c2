"""Pools and max_active_tasks in the database (issue 28, point 5), on SQLite and PostgreSQL:
two schedulers queueing at once never take more than the slots, because each counts under
the pool's (and the DAG's) row lock; `tests.support.race` holds the first one's transaction
open while the second queues."""

from __future__ import annotations

from sqlalchemy import func, select

from dagstore.core.db import Database, db_time
from dagstore.core.models import Dag, Repo
from scheduler.limits import queue_limited
from scheduler.models import Pool, TaskInstance
from scheduler.taskstate import queue_ready
from tests.support.authoring import make_run, task
from tests.support.race import race


def occupied(db: Database, pool: str) -> int:
    with db.read() as session:
        return session.scalar(
            select(func.count()).where(
                TaskInstance.pool == pool, TaskInstance.state.in_(("queued", "running"))
            )
        )


def add_pool(db: Database, name: str, slots: int) -> None:
    with db.write() as session:
        session.add(Pool(name=name, slots=slots))


def queue(session):
    return queue_limited(session, db_time(session))


def test_two_schedulers_never_take_more_than_the_slots(db: Database):
    add_pool(db, "wh", 3)
    for n in range(2):  # two DAGs share the pool
        make_run(db, [task(f"t{i}", pool="wh") for i in range(5)], dag_id=f"d{n}")
    first = []
    second = race(db, lambda s: first.extend(queue(s)), queue)
    assert len(first) == 3 and second == []  # the second counted after the first committed
    assert occupied(db, "wh") == 3


def test_a_free_slot_is_taken_again_and_a_resize_applies(db: Database):
    add_pool(db, "small", 1)
    make_run(db, [task(f"t{i}", pool="small") for i in range(3)])
    with db.write() as session:
        assert len(queue(session)) == 1
        assert queue(session) == []
        assert queue_ready(session, db_time(session)) == []  # the unlimited path leaves it
    with db.write() as session:
        session.get_one(Pool, "small").slots = 3
    with db.write() as session:
        assert len(queue(session)) == 2


def test_a_task_naming_a_missing_pool_waits(db: Database):
    make_run(db, [task("t", pool="nowhere")])
    with db.write() as session:
        assert queue(session) == []
    add_pool(db, "nowhere", 1)
    with db.write() as session:
        assert len(queue(session)) == 1


def test_max_active_tasks_bounds_one_dag_across_runs(db: Database):
    with db.write() as session:
        repo = Repo(name="limits", track="main", strict=False)
        session.add(repo)
        session.flush()
        session.add(Dag(dag_id="narrow", repo_id=repo.id, fileloc="d.py", current_sha="a" * 40,
                        structure={}, structure_hash="h", schedule=None, is_active=True,
                        is_paused=False))  # fmt: skip
    for _ in range(2):
        make_run(db, [task(f"t{i}") for i in range(3)], dag_id="narrow", max_active_tasks=2)
    first = []
    second = race(db, lambda s: first.extend(queue(s)), queue)
    assert len(first) == 2 and second == []


def test_a_full_pools_backlog_does_not_hide_another_pools_tasks(db: Database):
    add_pool(db, "busy", 1)
    add_pool(db, "idle", 1)
    make_run(db, [task(f"b{i}", pool="busy") for i in range(5)], dag_id="first")
    with db.write() as session:
        assert [p.task_id for p in queue_limited(session, db_time(session))] == ["b0"]
    make_run(db, [task("i0", pool="idle")], dag_id="second")
    with db.write() as session:  # b1..b4 come first by id, but their pool is full
        queued = queue_limited(session, db_time(session), limit=2)
    assert [p.task_id for p in queued] == ["i0"]
