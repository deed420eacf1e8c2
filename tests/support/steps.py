"""What each party does to a run, as one function of a session: the two sides of the
interleaving tests (`tests.support.race`). Each does what its HTTP route or scheduler step does
in one transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from dagstore.core.db import db_time
from scheduler.backfill import release_held
from scheduler.cancel import cancel
from scheduler.clear import ClearRequest, clear
from scheduler.taskstate import queue_ready
from scheduler.tries import append_log, claim, finish, heartbeat
from scheduler.views import get_run

Step = Callable[[Session], Any]


def claim_step(ti: int, try_number: int = 1) -> Step:
    return lambda session: claim(session, ti, try_number, "w", db_time(session))


def beat_step(ti: int, log: str | None = None, try_number: int = 1) -> Step:
    """POST /task-instances/{ti}/heartbeat: the heartbeat, then the log piece it carries."""

    def run(session: Session) -> int | None:
        heartbeat(session, ti, try_number, db_time(session))
        return append_log(session, ti, try_number, 0, log) if log else None

    return run


def finish_step(ti: int, success: bool = True, try_number: int = 1) -> Step:
    def run(session: Session) -> Any:
        error = None if success else "it broke"
        return finish(session, ti, try_number, success, db_time(session), error=error)

    return run


def cancel_step(run_id: str) -> Step:
    return lambda session: cancel(session, run_id, db_time(session))


def clear_step(run_id: str, task_ids: list[str] | None = None, downstream: bool = False) -> Step:
    """POST /runs/{id}/clear: clear, then queue what became ready."""

    def run(session: Session) -> list[str]:
        now = db_time(session)
        cleared = clear(session, run_id, ClearRequest(task_ids, downstream=downstream), now)
        queue_ready(session, now, run_pk=get_run(session, run_id).id)
        return cleared

    return run


def release_step(backfill_id: int | None = None) -> Step:
    """A scheduler's tick as far as runs go (`Scheduler.queue_tasks`): release held backfill
    runs as the limits allow, then queue what is ready."""

    def run(session: Session) -> int:
        now = db_time(session)
        released = release_held(session, now, backfill_id)
        queue_ready(session, now)
        return released

    return run


def queue_step(run_pk: int | None = None) -> Step:
    return lambda session: queue_ready(session, db_time(session), run_pk=run_pk)
