"""The scheduler's recovery pass (issue 12): stuck runs are moved again; tries are declared lost
only on evidence the scheduler could have had."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text, update

from dagstore.core.db import Database
from scheduler.loop import Scheduler, SchedulerConfig
from scheduler.models import TaskInstance
from tests.support.seed import run_states, running_run, ti_id


def scheduler(db: Database, heartbeat_timeout: float = 60.0) -> Scheduler:
    return Scheduler(db, None, SchedulerConfig(name="t", heartbeat_timeout=heartbeat_timeout))


def test_a_run_nothing_moves_any_more_is_evaluated_again(db: Database):
    """The state the write skew used to leave behind: upstream done, join never readied."""
    run = running_run(db, {"a": [], "b": [], "c": ["a", "b"]})
    with db.write() as session:  # both finished, and neither readied c
        session.execute(
            update(TaskInstance)
            .where(TaskInstance.run_pk == run, TaskInstance.task_id.in_(["a", "b"]))
            .values(state="success")
        )
    scheduler(db).recover()
    assert run_states(db, run) == (
        "running",
        {"a": "success", "b": "success", "c": "scheduled"},
    )


def test_a_run_whose_tasks_all_ended_is_settled(db: Database):
    run = running_run(db, {"a": [], "b": []})
    with db.write() as session:
        session.execute(
            update(TaskInstance).where(TaskInstance.run_pk == run).values(state="success")
        )
    scheduler(db).recover()
    assert run_states(db, run)[0] == "success"


def test_runs_that_move_are_left_alone(db: Database):
    run = running_run(db, {"a": [], "c": ["a"]})
    scheduler(db).recover()
    assert run_states(db, run) == ("running", {"a": "running", "c": "none"})


@contextmanager
def writes_blocked(db: Database, seconds: float) -> Iterator[None]:
    """Another session holds every write off for `seconds` (a long lock, SQLite's one writer)."""
    locked = threading.Event()

    def hold() -> None:
        with db.engine.connect() as conn:
            conn.begin()  # SQLite: BEGIN IMMEDIATE (dagstore.core.db), the write lock
            if not db.is_sqlite:
                conn.execute(
                    text("LOCK TABLE dags, dag_runs, task_instances IN ACCESS EXCLUSIVE MODE")
                )
            locked.set()
            time.sleep(seconds)
            conn.rollback()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(10)
    try:
        yield
    finally:
        holder.join()


def test_no_try_is_declared_lost_right_after_the_database_stalled(db: Database):
    """While writes were blocked, the worker's heartbeats could not land either: silence over
    that time is no evidence. Once writes have gone through for a whole timeout, it is."""
    timeout = 1.5
    sched = scheduler(db, heartbeat_timeout=timeout)
    time.sleep(timeout + 0.1)  # a scheduler that has been writing fine for a while
    run = running_run(db, {"a": []})  # heartbeat: now
    with writes_blocked(db, seconds=timeout + 1.0):
        sched.tick()  # waits for the lock, then recovers
    assert run_states(db, run)[1] == {"a": "running"}, "declared lost on a stall"
    time.sleep(timeout + 0.1)  # writes go through now, and still no heartbeat comes
    sched.recover()
    assert run_states(db, run) == ("failed", {"a": "failed"})
    assert ti_id(db, run, "a")


def test_whether_tries_are_judged_lost_is_logged_when_it_changes(db: Database, caplog):
    """Issue 29, item 5: a healthy scheduler's first timeout is one line, not one per tick;
    a stall and the end of it are a line each."""
    sched = scheduler(db, heartbeat_timeout=60.0)
    caplog.set_level("INFO", logger="pinflow")

    def said() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if "judging tries lost" in r.getMessage()]
        caplog.clear()
        return lines

    for _ in range(12):  # a minute of 5-second ticks
        sched.recover()
    assert said() == [
        "not judging tries lost for the first 60 s (heartbeat timeout): what happened "
        "before this scheduler started is not known"
    ]
    sched.health.last_stall -= 60.0  # a whole timeout of writes went through
    for _ in range(3):
        sched.recover()
    assert said() == ["judging tries lost: database writes went through for 60 s"]
    sched.health.last_stall = time.monotonic()  # a write stalled
    for _ in range(3):
        sched.recover()
    assert said() == [
        "database writes stalled: not judging tries lost until they go through for 60 s"
    ]
