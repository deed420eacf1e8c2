"""on_failure callbacks the server owes: tries that failed for good with no worker to run them.

A try that fails on a worker runs its callback there, right after (`runner.execute`). Two
paths fail a task for good with no worker in them: a try judged lost (its worker died,
`tries.fail_lost`) with no retry left, and a mapped task failed at expansion (a non-list
upstream, more than PINFLOW_MAX_MAP: `scheduler.expand`). There the scheduler records that the
callback is owed (`owe_callback`, in the same transaction as the failure), and only when the
pinned structure names one (the task's or its DAG's): a DAG without on_failure owes nothing.

An owed callback goes through the states a try does, fenced the same way:

    due ──claim (one worker: job number + state)──▶ running ──finish──▶ done | failed
     ▲                                                  │
     └── recovery: silent past the heartbeat timeout ───┘  (MAX_ATTEMPTS times, then given_up)

Every change is a conditional UPDATE from the expected state and `number` (the attempt a
worker's job names: a late job of an earlier attempt can never claim). The claim hands out a
credential bound to the failed try (`dagstore.access.grants`) whose hash only this row
holds: heartbeat, finish and the version's archive accept it while the callback runs, and the
dead try's own credential is worth nothing here. The callback's output is written into the
failed try's log between two marker lines, live (pieces with heartbeats, after `log_base`)
and whole at the finish. Callbacks are enqueued by the recovery pass (`requeue_callbacks`):
a due callback whose job Redis does not hold is enqueued, so one enqueued before a crash or a
Redis wipe is enqueued again, and the job id (per attempt) makes a double enqueue harmless.
Upstream_failed, canceled and dagrun_timeout-stopped tasks owe none (as in Airflow).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, func, insert, select
from sqlalchemy.orm import Session

from dagstore.access.grants import TryGrant
from dagstore.core.models import Repo
from dagstore.parsing.dags import version_dag
from scheduler.models import DagRun, TaskCallback, TaskInstance, TaskTry
from scheduler.trylog import held_log, store_log

MARK = "-----"  # around the lines a callback adds to a try's log


def callback_name(session: Session, ti_id: int) -> str | None:
    """The on_failure callback the task's pinned structure names (its own, else its DAG's)."""
    row = session.execute(
        select(TaskInstance.task_id, DagRun.dag_id, DagRun.repo_id,
               func.coalesce(TaskInstance.sha, DagRun.sha).label("sha"))
        .join(DagRun, DagRun.id == TaskInstance.run_pk)
        .where(TaskInstance.id == ti_id)
    ).one_or_none()  # fmt: skip
    if row is None:
        return None
    vd = version_dag(session, row.repo_id, row.sha, row.dag_id)
    if vd is None:
        return None
    task = next((t for t in vd.structure.get("tasks", []) if t.get("task_id") == row.task_id), {})
    return task.get("on_failure") or vd.structure.get("on_failure")


def owe_callback(session: Session, ti_id: int, try_number: int, error: str, now: datetime) -> bool:
    """Record that try `try_number`, failed for good by the scheduler, owes its callback;
    False when the DAG names none. In the caller's transaction, the one that failed it."""
    if callback_name(session, ti_id) is None:
        return False
    session.execute(
        insert(TaskCallback).values(
            ti_id=ti_id, try_number=try_number, state="due", number=1, error=error or "failed",
            due_at=now, log_base=0,
        )
    )  # fmt: skip
    return True


def fail_unclaimed(
    session: Session, ti_id: int, try_number: int, error: str, now: datetime
) -> None:
    """A task the scheduler failed before any worker claimed it (a mapped task at expansion):
    give it a try on record, so its error and its callback's output have a log, and owe the
    callback."""
    session.execute(
        insert(TaskTry).values(
            ti_id=ti_id, try_number=try_number, state="failed", started_at=now, ended_at=now,
            error=error, log=f"pinflow: {error}\n",
        )
    )  # fmt: skip
    owe_callback(session, ti_id, try_number, error, now)


def append_line(session: Session, ti_id: int, try_number: int, text: str) -> int:
    """Add `text` at the end of the try's log; returns the log's size (its stream offset)."""
    data = text.encode("utf-8")
    log = held_log(session, ti_id, try_number, len(data))
    if log is None:
        return 0
    log.write(data)
    store_log(session, ti_id, try_number, log)
    return log.total


def version_select() -> Select:
    """(repo name, sha) of a task instance's pinned version: what a credential may download,
    for a try (`scheduler.grants`) or its callback."""
    return (
        select(Repo.name, func.coalesce(TaskInstance.sha, DagRun.sha).label("sha"))
        .join(DagRun, DagRun.repo_id == Repo.id)
        .join(TaskInstance, TaskInstance.run_pk == DagRun.id)
    )


def callback_version(session: Session, grant: TryGrant) -> tuple[str, str] | None:
    """(repo, sha) a running callback's credential may download (`scheduler.grants`)."""
    row = session.execute(
        version_select()
        .join(TaskCallback, TaskCallback.ti_id == TaskInstance.id)
        .where(
            TaskCallback.ti_id == grant.ti_id,
            TaskCallback.try_number == grant.try_number,
            TaskCallback.state == "running",
            TaskCallback.grant_hash == grant.digest,
        )
    ).one_or_none()
    return (row.name, row.sha) if row is not None else None
