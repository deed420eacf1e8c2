"""Canceling a run: nothing of it starts any more, and what runs is stopped.

Every unfinished task becomes `canceled` in one transaction under the run's lock. A queued
task's claim then finds it not queued (409: the worker drops the job); a running task's next
heartbeat finds it not running (409: the worker stops the task, `runner.heartbeat`, within one
heartbeat interval) and its late finish, if any, is refused. The try on record is marked
canceled too. A canceled run can be cleared (`scheduler.clear`) like a failed one.

Locks in the order of `scheduler.locks`: the run, its tasks, then the tries of those that
run; a heartbeat holds a task and then wants its try, so the tries come last here too. A held
backfill run that is canceled waits for its turn no more (`held` off).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from dagstore.core.errors import Conflict
from scheduler.locks import lock_tasks
from scheduler.metrics import RUNS_FINISHED, count_on_commit
from scheduler.models import DagRun, TaskInstance, TaskTry
from scheduler.runs import ACTIVE_RUN_STATES
from scheduler.taskstate import MOVING
from scheduler.tries import end_log
from scheduler.views import get_run

UNFINISHED = ("none", *MOVING)


def cancel(session: Session, run_id: str, now: datetime, by: str = "") -> int:
    """Cancel run `run_id`; returns how many tasks it stopped or kept from starting. `by`:
    who canceled it, for the ending line of the logs of the tries it stops."""
    run = get_run(session, run_id, lock=True)
    if run.state not in ACTIVE_RUN_STATES:
        raise Conflict(f"run {run_id!r} has ended ({run.state}): nothing to cancel")
    how = f"canceled by {by}" if by else "canceled"
    return stop_run(session, run, now, "canceled", "canceled", how)


def stop_run(session: Session, run: DagRun, now: datetime, final: str, error: str, how: str) -> int:
    """End the locked, active `run` as `final`: its unfinished tasks `canceled` with `error`
    (a cancel, or a dagrun_timeout: `scheduler.timeouts`), the logs of the tries it stops
    ending with `how`; returns how many."""
    tasks = lock_tasks(session, run.id, UNFINISHED)
    running = [ti.id for ti in tasks if ti.state == "running"]
    for ti in tasks:
        if ti.state == "running":
            end_log(session, ti.id, ti.try_number, how)
    stopped = session.execute(
        update(TaskInstance)
        .where(TaskInstance.id.in_([ti.id for ti in tasks]))
        .values(state="canceled", ended_at=now, next_try_at=None, error=error)
        .execution_options(synchronize_session=False)
    ).rowcount
    if running:
        session.execute(
            update(TaskTry)
            .where(TaskTry.ti_id.in_(running), TaskTry.state == "running")
            .values(state="canceled", ended_at=now, error=error)
            .execution_options(synchronize_session=False)
        )
    ended = session.execute(
        update(DagRun)
        .where(DagRun.id == run.id, DagRun.state.in_(ACTIVE_RUN_STATES))
        .values(state=final, ended_at=now, held=False)
        .execution_options(synchronize_session=False)
    )
    if ended.rowcount == 1:
        count_on_commit(session, RUNS_FINISHED.labels(final))
    session.expire(run, ["state", "ended_at", "held"])
    return stopped
