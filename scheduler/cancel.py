"""Canceling a run: nothing of it starts any more, and what runs is stopped.

Every unfinished task becomes `canceled` in one transaction under the run's lock. A queued
task's claim then finds it not queued (409: the worker drops the job); a running task's next
heartbeat finds it not running (409: the worker stops the task, `runner.heartbeat`, within one
heartbeat interval) and its late finish, if any, is refused. The try on record is marked
canceled too. A canceled run can be cleared (`scheduler.clear`) like a failed one.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dagstore.errors import Conflict
from scheduler.models import DagRun, TaskInstance, TaskTry
from scheduler.runs import ACTIVE_RUN_STATES
from scheduler.taskstate import MOVING
from scheduler.views import get_run

UNFINISHED = ("none", *MOVING)


def cancel(session: Session, run_id: str, now: datetime) -> int:
    """Cancel run `run_id`; returns how many tasks it stopped or kept from starting."""
    run = get_run(session, run_id, lock=True)
    if run.state not in ACTIVE_RUN_STATES:
        raise Conflict(f"run {run_id!r} has ended ({run.state}): nothing to cancel")
    running_ids = select(TaskInstance.id).where(
        TaskInstance.run_pk == run.id, TaskInstance.state == "running"
    )
    session.execute(
        update(TaskTry)
        .where(TaskTry.state == "running", TaskTry.ti_id.in_(running_ids))
        .values(state="canceled", ended_at=now, error="canceled")
        .execution_options(synchronize_session=False)
    )
    stopped = session.execute(
        update(TaskInstance)
        .where(TaskInstance.run_pk == run.id, TaskInstance.state.in_(UNFINISHED))
        .values(state="canceled", ended_at=now, next_try_at=None, error="canceled")
        .execution_options(synchronize_session=False)
    ).rowcount
    session.execute(
        update(DagRun)
        .where(DagRun.id == run.id, DagRun.state.in_(ACTIVE_RUN_STATES))
        .values(state="canceled", ended_at=now)
        .execution_options(synchronize_session=False)
    )
    session.expire(run, ["state", "ended_at"])
    return stopped
