"""A try's log in its row (`task_tries.log`, `log_tail`, `log_bytes`: `dagstore.core.logtail`),
read and written back whole: for the few writers that add to a log the worker did not send
(an ending line, a callback's output)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dagstore.core.logtail import DEFAULT_CAP, HeadTail
from scheduler.models import TaskTry


def log_values(log: HeadTail) -> dict[str, Any]:
    """The columns of a try's log (`TaskTry.log`, `log_tail`, `log_bytes`)."""
    head, tail = log.text()
    return {"log": head, "log_tail": tail, "log_bytes": log.total}


def held_log(
    session: Session, ti_id: int, try_number: int, room: int, *where: Any
) -> HeadTail | None:
    """A try's log as the row holds it, with `room` bytes more to add without cutting what is
    held (the cap is made large enough); None when there is no such try (or `where` fails)."""
    row = session.execute(
        select(TaskTry.log, TaskTry.log_tail, TaskTry.log_bytes).where(
            TaskTry.ti_id == ti_id, TaskTry.try_number == try_number, *where
        )
    ).one_or_none()
    if row is None:
        return None
    held = len((row.log or "").encode("utf-8")) + len((row.log_tail or "").encode("utf-8"))
    cap = max(DEFAULT_CAP, 4 * (held + room + 2))
    return HeadTail.restore(cap, row.log or "", row.log_tail or "", row.log_bytes)


def store_log(session: Session, ti_id: int, try_number: int, log: HeadTail) -> None:
    session.execute(
        update(TaskTry)
        .where(TaskTry.ti_id == ti_id, TaskTry.try_number == try_number)
        .values(log_values(log))
        .execution_options(synchronize_session=False)
    )
