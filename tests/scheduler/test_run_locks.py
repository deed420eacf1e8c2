"""Sibling tasks that end at the same moment (issue 12, finding 1: write skew).

Each test holds one transaction open after it changed a task, starts a second one that changes
a sibling in another thread, lets the second get as far as it can (until it waits for a lock,
or to its end), then commits the first. Under PostgreSQL's READ COMMITTED, a second transaction
that does not wait sees the first's task still running: the join never becomes ready and the
run never settles. On SQLite the second transaction waits for the single writer either way.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from dagstore.core.db import Database, db_time
from scheduler.models import TaskInstance
from scheduler.tries import fail_lost, finish
from tests.support.race import race
from tests.support.seed import run_states, running_run, ti_id

HEARTBEAT_TIMEOUT = 60.0


def succeed(ti: int) -> Callable[[Session], Any]:
    return lambda session: finish(session, ti, 1, True, db_time(session), result=1)


def lose(ti: int) -> Callable[[Session], Any]:
    """The scheduler's recovery pass, finding `ti` silent for longer than the timeout."""

    def run(session: Session) -> Any:
        session.execute(
            update(TaskInstance)
            .where(TaskInstance.id == ti)
            .values(heartbeat_at=db_time(session) - timedelta(seconds=2 * HEARTBEAT_TIMEOUT))
        )
        return fail_lost(session, db_time(session), HEARTBEAT_TIMEOUT)

    return run


def test_join_becomes_ready_when_both_upstreams_finish_at_once(db: Database):
    run = running_run(db, {"a": [], "b": [], "c": ["a", "b"]})
    race(db, succeed(ti_id(db, run, "a")), succeed(ti_id(db, run, "b")))
    run_state, tasks = run_states(db, run)
    assert tasks == {"a": "success", "b": "success", "c": "scheduled"}
    assert run_state == "running"


def test_run_settles_when_its_last_two_tasks_finish_at_once(db: Database):
    run = running_run(db, {"a": [], "b": []})
    race(db, succeed(ti_id(db, run, "a")), succeed(ti_id(db, run, "b")))
    assert run_states(db, run) == ("success", {"a": "success", "b": "success"})


def test_run_settles_when_a_lost_task_and_its_sibling_end_at_once(db: Database):
    run = running_run(db, {"a": [], "b": []})
    race(db, lose(ti_id(db, run, "a")), succeed(ti_id(db, run, "b")))
    assert run_states(db, run) == ("failed", {"a": "failed", "b": "success"})


def test_run_settles_when_a_sibling_finishes_while_a_task_is_declared_lost(db: Database):
    run = running_run(db, {"a": [], "b": []})
    race(db, succeed(ti_id(db, run, "b")), lose(ti_id(db, run, "a")))
    assert run_states(db, run) == ("failed", {"a": "failed", "b": "success"})
