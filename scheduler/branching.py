"""A branch task's finish: the direct downstreams it did not choose are skipped.

Which ones is `dagstore.authoring.branching.skipped_by`, the rule `pinflow dags test` applies
too: the unchosen direct downstreams, except those a chosen task leads to (a join). From
there skipping spreads by trigger rules (`scheduler.taskstate.schedule_ready`, which the
finish calls next). The worker has checked the result (`runner.execute`); ids here that are
not direct downstreams are ignored. Runs under the run's lock, which the finish holds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dagstore.authoring.branching import skipped_by
from scheduler.models import TaskInstance


def skip_unchosen(
    session: Session, run_pk: int, branch_id: str, result: Any, now: datetime
) -> list[str]:
    """none → skipped for the tasks the branch's `result` skips; returns their ids."""
    rows = session.execute(
        select(TaskInstance.task_id, TaskInstance.upstream).where(TaskInstance.run_pk == run_pk)
    ).all()
    below: dict[str, set[str]] = {}
    for task_id, upstream in rows:
        for up in upstream or []:
            below.setdefault(up, set()).add(task_id)
    skipped = sorted(skipped_by(below, branch_id, result))
    if skipped:
        session.execute(
            update(TaskInstance)
            .where(
                TaskInstance.run_pk == run_pk,
                TaskInstance.task_id.in_(skipped),
                TaskInstance.state == "none",
            )
            .values(state="skipped", ended_at=now)
            .execution_options(synchronize_session=False)
        )
    return skipped
