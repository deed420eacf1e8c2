"""A backfill's max_active_runs holds, whoever starts its runs (issue 24, parts 2 and 3).

Two schedulers release held runs at once (every scheduler does it on every tick), and an
operator clears a backfill run while its backfill is full: neither may start more runs than
max_active_runs. The interleavings are set up on purpose (`tests.support.race`), on PostgreSQL
(READ COMMITTED, where the bugs were) and on SQLite.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from dagstore.core.db import Database, db_time
from scheduler.backfill import backfill_json
from scheduler.cancel import cancel
from scheduler.models import Backfill, DagRun, TaskInstance
from scheduler.runs import ACTIVE_RUN_STATES
from tests.support.race import race
from tests.support.seed import Backfilled, held_backfill, run_id_of
from tests.support.steps import claim_step, clear_step, finish_step, release_step

BUSY = ("scheduled", "queued", "running")


def runs(db: Database, backfill: Backfilled) -> dict[int, tuple[bool, str, str]]:
    """run pk → (held, run state, its task's state)."""
    with db.read() as session:
        rows = session.execute(
            select(DagRun.id, DagRun.held, DagRun.state, TaskInstance.state)
            .join(TaskInstance, TaskInstance.run_pk == DagRun.id)
            .where(DagRun.backfill_id == backfill.id)
        )
        return {pk: (held, state, task) for pk, held, state, task in rows}


def assert_within_limit(db: Database, backfill: Backfilled, limit: int) -> set[int]:
    """No more than `limit` runs are active, and only active runs have tasks to run; returns
    the active runs."""
    now = runs(db, backfill)
    active = {pk for pk, (held, state, _) in now.items() if not held and state in ACTIVE_RUN_STATES}
    busy = {pk for pk, (_, _, task) in now.items() if task in BUSY}
    assert len(active) <= limit, f"{len(active)} active runs, max_active_runs {limit}: {now}"
    assert busy <= active, f"runs {busy - active} have tasks to run but are not active: {now}"
    return active


def end_run(db: Database, run_pk: int, success: bool) -> None:
    """A worker runs the released run's (queued) task to its end."""
    with db.read() as session:
        ti, try_number = session.execute(
            select(TaskInstance.id, TaskInstance.try_number).where(TaskInstance.run_pk == run_pk)
        ).one()
    with db.write() as session:
        claim_step(ti, try_number)(session)
    with db.write() as session:
        finish_step(ti, success, try_number)(session)


def tick(db: Database) -> None:
    with db.write() as session:
        release_step()(session)


def test_two_schedulers_releasing_at_once_stay_within_max_active_runs(db: Database):
    """Part 2: each counted 0 active before the other committed, and each released 2."""
    backfill = held_backfill(db, "two", days=6, max_active_runs=2)
    race(db, release_step(), release_step())
    assert len(assert_within_limit(db, backfill, 2)) == 2
    tick(db)
    assert len(assert_within_limit(db, backfill, 2)) == 2


def test_clearing_held_runs_does_not_start_them(db: Database):
    """Part 3, as the review found it: with max_active_runs 1, clearing two runs still held
    made three runs run at once."""
    backfill = held_backfill(db, "heldclear", days=5, max_active_runs=1)
    tick(db)
    for run_pk in backfill.runs[-2:]:
        with db.write() as session:
            clear_step(run_id_of(db, run_pk))(session)
    assert assert_within_limit(db, backfill, 1) == {backfill.runs[0]}
    after = runs(db, backfill)
    assert all(after[pk] == (True, "queued", "none") for pk in backfill.runs[1:]), after
    # ... and they run in their turn, oldest tick first, one at a time.
    order = []
    for _ in backfill.runs:
        (running,) = assert_within_limit(db, backfill, 1)
        order.append(running)
        end_run(db, running, success=True)
        tick(db)
    assert order == backfill.runs
    assert {state for _, state, _ in runs(db, backfill).values()} == {"success"}


def test_a_cleared_finished_run_waits_for_a_slot_and_goes_first(db: Database):
    """Clearing a run that ended makes it active again: it waits while the backfill is full
    (held, as it was before its first start), and is the next to start, being the oldest."""
    backfill = held_backfill(db, "rerun", days=3, max_active_runs=1)
    first, second, third = backfill.runs
    tick(db)
    end_run(db, first, success=False)
    tick(db)
    assert assert_within_limit(db, backfill, 1) == {second}
    with db.write() as session:
        assert clear_step(run_id_of(db, first))(session) == ["only"]
    assert runs(db, backfill)[first] == (True, "queued", "none")
    assert assert_within_limit(db, backfill, 1) == {second}
    end_run(db, second, success=True)
    tick(db)
    assert assert_within_limit(db, backfill, 1) == {first}
    assert runs(db, backfill)[third][0], "the third waits behind the cleared first"


def test_a_cleared_finished_run_starts_at_once_when_there_is_room(db: Database):
    backfill = held_backfill(db, "room", days=2, max_active_runs=2)
    first, second = backfill.runs
    tick(db)
    end_run(db, first, success=False)
    with db.write() as session:
        clear_step(run_id_of(db, first))(session)
    assert assert_within_limit(db, backfill, 2) == {first, second}
    assert runs(db, backfill)[first] == (False, "queued", "queued")


def test_a_canceled_held_run_waits_no_more_until_it_is_cleared(db: Database):
    backfill = held_backfill(db, "cancelheld", days=3, max_active_runs=1)
    first, second, third = backfill.runs
    tick(db)
    with db.write() as session:
        cancel(session, run_id_of(db, third), db_time(session))
    assert runs(db, backfill)[third] == (False, "canceled", "canceled")
    with db.read() as session:
        shown = backfill_json(session, session.get_one(Backfill, backfill.id))
    assert shown["held"] == 1 and shown["states"] == {"queued": 2, "canceled": 1}
    end_run(db, first, success=True)
    tick(db)
    assert assert_within_limit(db, backfill, 1) == {second}, "a canceled run is not released"
    with db.write() as session:
        clear_step(run_id_of(db, third))(session)
    assert runs(db, backfill)[third] == (True, "queued", "none")
    end_run(db, second, success=True)
    tick(db)
    assert assert_within_limit(db, backfill, 1) == {third}


@pytest.mark.parametrize("clear_first", [True, False], ids=["clear-first", "release-first"])
def test_a_clear_and_a_release_at_once_stay_within_max_active_runs(db: Database, clear_first):
    """The clear counts under the backfill's lock, as a release does: whichever comes second
    sees what the first started."""
    backfill = held_backfill(db, "clearrace", days=3, max_active_runs=1)
    first, second, _ = backfill.runs
    tick(db)
    end_run(db, first, success=False)  # room for one: the release and the clear both want it
    clearing, releasing = clear_step(run_id_of(db, first)), release_step()
    race(db, *((clearing, releasing) if clear_first else (releasing, clearing)))
    assert assert_within_limit(db, backfill, 1) == ({first} if clear_first else {second})
