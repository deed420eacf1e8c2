"""An operator's cancel, clear or backfill release at the moment a worker claims, heartbeats
or finishes (issue 24, part 4): one lock order (`scheduler.locks`), so no interleaving
deadlocks and every one ends as if the two had run one after the other.

Each test sets the interleaving up on purpose (`tests.support.race`): the first transaction
holds what it changed while the second gets as far as it can; `interleave` stops the first in
the middle (a heartbeat between its task instance and its log piece, the scheduler between
two tasks it queues). On PostgreSQL (READ COMMITTED, where the deadlocks were) and SQLite.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from dagstore.core.db import Database, db_time
from dagstore.core.errors import Conflict
from dagstore.core.models import Repo
from scheduler.models import DagRun, TaskInstance, TaskTry
from scheduler.runs import ACTIVE_RUN_STATES, create_run
from scheduler.taskstate import schedule_ready
from tests.support.race import interleave, race
from tests.support.seed import held_backfill, run_id_of, run_states, running_run, ti_id
from tests.support.steps import (
    Step,
    beat_step,
    cancel_step,
    claim_step,
    clear_step,
    finish_step,
    queue_step,
    release_step,
)

ORDERS = pytest.mark.parametrize("operator_first", [True, False], ids=["operator", "worker"])
MID_HEARTBEAT = r"^UPDATE task_instances"  # the heartbeat's first statement; its log is next
LINE = "a line the task printed\n"


def tries(db: Database, ti: int) -> list[tuple[int, str, str]]:
    """(try number, state, log) of a task instance's tries; the log without the pinflow line
    that ends it (how the try ended: tests/e2e/test_task_logs.py)."""
    with db.read() as session:
        rows = session.execute(
            select(TaskTry.try_number, TaskTry.state, TaskTry.log)
            .where(TaskTry.ti_id == ti)
            .order_by(TaskTry.try_number)
        )
        return [(n, state, _without_ending(n, log or "")) for n, state, log in rows]


def _without_ending(try_number: int, log: str) -> str:
    lines = log.splitlines(keepends=True)
    if lines and lines[-1].startswith(f"pinflow: try {try_number} "):
        lines.pop()
    return "".join(lines)


def in_order(db: Database, operator: Step, worker: Step, operator_first: bool) -> None:
    race(db, *((operator, worker) if operator_first else (worker, operator)))


# -- cancel ------------------------------------------------------------------------------


def test_cancel_in_the_middle_of_a_heartbeat_that_carries_a_log(db: Database):
    """The review's deadlock: the heartbeat has updated its task instance and is about to add
    its log piece to the try; cancel, which used to take the try before the task instance,
    waited for the heartbeat's task instance while holding the try the heartbeat needed."""
    run = running_run(db, {"a": []})
    a = ti_id(db, run, "a")
    interleave(db, beat_step(a, LINE), cancel_step(run_id_of(db, run)), after=MID_HEARTBEAT)
    assert run_states(db, run) == ("canceled", {"a": "canceled"})
    assert tries(db, a) == [(1, "canceled", LINE)], "the heartbeat's log piece is kept"


@ORDERS
def test_cancel_and_a_heartbeat(db: Database, operator_first: bool):
    run = running_run(db, {"a": []})
    a = ti_id(db, run, "a")
    if operator_first:
        with pytest.raises(Conflict, match="no longer running"):
            in_order(db, cancel_step(run_id_of(db, run)), beat_step(a, LINE), True)
    else:
        in_order(db, cancel_step(run_id_of(db, run)), beat_step(a, LINE), False)
    assert run_states(db, run) == ("canceled", {"a": "canceled"})
    assert tries(db, a) == [(1, "canceled", "" if operator_first else LINE)]


@ORDERS
def test_cancel_and_a_claim(db: Database, operator_first: bool):
    run = running_run(db, {"a": []}, claimed=False)
    a = ti_id(db, run, "a")
    if operator_first:
        with pytest.raises(Conflict, match="cannot be claimed"):
            in_order(db, cancel_step(run_id_of(db, run)), claim_step(a), True)
        assert tries(db, a) == []
    else:
        in_order(db, cancel_step(run_id_of(db, run)), claim_step(a), False)
        assert tries(db, a) == [(1, "canceled", "")]
    assert run_states(db, run) == ("canceled", {"a": "canceled"})


@ORDERS
def test_cancel_and_a_finish(db: Database, operator_first: bool):
    run = running_run(db, {"a": [], "b": ["a"]})
    a = ti_id(db, run, "a")
    if operator_first:
        with pytest.raises(Conflict, match="cannot finish"):
            in_order(db, cancel_step(run_id_of(db, run)), finish_step(a), True)
        assert run_states(db, run) == ("canceled", {"a": "canceled", "b": "canceled"})
        assert tries(db, a) == [(1, "canceled", "")]
    else:
        in_order(db, cancel_step(run_id_of(db, run)), finish_step(a), False)
        assert run_states(db, run) == ("canceled", {"a": "success", "b": "canceled"})
        assert tries(db, a) == [(1, "success", "")]


# -- clear -------------------------------------------------------------------------------


def failed_sibling(db: Database, claimed: bool = True) -> tuple[int, int, int]:
    """A run of two sibling tasks: `b` failed, `a` running (queued unless `claimed`)."""
    run = running_run(db, {"a": [], "b": []}, claimed=False)
    a, b = ti_id(db, run, "a"), ti_id(db, run, "b")
    with db.write() as session:
        if claimed:
            claim_step(a)(session)
        claim_step(b)(session)
    with db.write() as session:
        finish_step(b, success=False)(session)
    return run, a, b


@ORDERS
def test_clear_and_a_claim_of_a_sibling(db: Database, operator_first: bool):
    run, a, _ = failed_sibling(db, claimed=False)
    in_order(db, clear_step(run_id_of(db, run), ["b"]), claim_step(a), operator_first)
    assert run_states(db, run) == ("running", {"a": "running", "b": "queued"})


def test_clear_in_the_middle_of_a_sibling_heartbeat(db: Database):
    run, a, _ = failed_sibling(db)
    interleave(db, beat_step(a, LINE), clear_step(run_id_of(db, run), ["b"]), after=MID_HEARTBEAT)
    assert run_states(db, run) == ("running", {"a": "running", "b": "queued"})
    assert tries(db, a) == [(1, "running", LINE)]


@ORDERS
def test_clear_and_a_sibling_heartbeat(db: Database, operator_first: bool):
    run, a, _ = failed_sibling(db)
    in_order(db, clear_step(run_id_of(db, run), ["b"]), beat_step(a, LINE), operator_first)
    assert run_states(db, run) == ("running", {"a": "running", "b": "queued"})
    assert tries(db, a) == [(1, "running", LINE)]


@ORDERS
def test_clear_and_a_finish_that_decide_the_same_join(db: Database, operator_first: bool):
    """`c` waits for `a` (failed, cleared with its downstream) and `b` (finishing): whichever
    comes second sees the first's states, so `c` waits for the rerun of `a`."""
    run = running_run(db, {"a": [], "b": [], "c": ["a", "b"]})
    a, b = ti_id(db, run, "a"), ti_id(db, run, "b")
    with db.write() as session:
        finish_step(a, success=False)(session)
    assert run_states(db, run)[1]["c"] == "upstream_failed"
    clearing = clear_step(run_id_of(db, run), ["a"], downstream=True)
    in_order(db, clearing, finish_step(b), operator_first)
    assert run_states(db, run) == ("running", {"a": "queued", "b": "success", "c": "none"})


# -- a backfill's release ----------------------------------------------------------------


def backfill_running(db: Database, name: str, claimed: int) -> tuple[int, list[int]]:
    """A backfill of three runs, two at a time: the first two released, the tasks of the
    first `claimed` of them claimed. Returns the backfill id and each run's task instance."""
    backfill = held_backfill(db, name, days=3, max_active_runs=2)
    with db.write() as session:
        release_step()(session)
    tis = [ti_id(db, run, "only") for run in backfill.runs]
    with db.write() as session:
        for ti in tis[:claimed]:
            claim_step(ti)(session)
    return backfill.id, tis


def active_runs(db: Database, backfill_id: int) -> list[int]:
    with db.read() as session:
        return list(
            session.scalars(
                select(DagRun.id)
                .where(
                    DagRun.backfill_id == backfill_id,
                    ~DagRun.held,
                    DagRun.state.in_(ACTIVE_RUN_STATES),
                )
                .order_by(DagRun.id)
            )
        )


@ORDERS
def test_a_release_and_a_claim(db: Database, operator_first: bool):
    """The second run's task is claimed while the first's end makes room for the third."""
    backfill, tis = backfill_running(db, f"claim{operator_first}", claimed=1)
    with db.write() as session:
        finish_step(tis[0])(session)
    in_order(db, release_step(), claim_step(tis[1]), operator_first)
    assert len(active_runs(db, backfill)) == 2
    with db.read() as session:
        assert session.get_one(TaskInstance, tis[1]).state == "running"
        assert session.get_one(TaskInstance, tis[2]).state == "queued"


@ORDERS
def test_a_release_and_a_heartbeat(db: Database, operator_first: bool):
    backfill, tis = backfill_running(db, f"beat{operator_first}", claimed=2)
    with db.write() as session:
        finish_step(tis[1])(session)
    in_order(db, release_step(), beat_step(tis[0], LINE), operator_first)
    assert len(active_runs(db, backfill)) == 2
    assert tries(db, tis[0]) == [(1, "running", LINE)]


@ORDERS
def test_a_release_and_a_finish_that_makes_room(db: Database, operator_first: bool):
    """A release that counts before the finish commits finds no room (the next tick does);
    one that counts after it releases the third run. Never three at once."""
    backfill, tis = backfill_running(db, f"finish{operator_first}", claimed=2)
    in_order(db, release_step(), finish_step(tis[1]), operator_first)
    assert len(active_runs(db, backfill)) <= 2
    with db.write() as session:
        release_step()(session)
    assert len(active_runs(db, backfill)) == 2


# -- the scheduler queueing tasks, against an operator -----------------------------------


def scheduled_pair(db: Database) -> int:
    """A run whose two root tasks are scheduled and not queued yet; the task named first in
    the DAG (`z`) has the lower id, the other (`a`) sorts first by name."""
    with db.write() as session:
        run = create_run(
            session, dag_id="pair", repo_id=_repo(session), sha="a" * 40, fileloc="p.py",
            structure={"tasks": [{"task_id": "z"}, {"task_id": "a"}]},
            logical_date=db_time(session), run_type="manual", created_by="test",
        )  # fmt: skip
        schedule_ready(session, run, db_time(session))
        return run.id


def _repo(session: Session) -> int:
    repo = Repo(name="pairs", track="main", strict=False)
    session.add(repo)
    session.flush()
    return repo.id


def test_a_clear_while_the_scheduler_queues_the_same_tasks(db: Database):
    """The scheduler queues a run's tasks in id order; clear took them by name, so each held
    one the other wanted next. Now clear goes in id order too: it waits, then finds them
    queued (409: they are no longer clearable)."""
    run = scheduled_pair(db)
    with pytest.raises(Conflict):
        interleave(db, queue_step(), clear_step(run_id_of(db, run)), after=r"^UPDATE task_inst")
    assert run_states(db, run) == ("queued", {"z": "queued", "a": "queued"})


def test_a_cancel_while_the_scheduler_queues_the_same_tasks(db: Database):
    run = scheduled_pair(db)
    queued, stopped = interleave(
        db, queue_step(), cancel_step(run_id_of(db, run)), after=r"^UPDATE task_inst"
    )
    assert len(queued) == 2 and stopped == 2
    assert run_states(db, run) == ("canceled", {"z": "canceled", "a": "canceled"})
