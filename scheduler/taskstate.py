"""Task-instance states and run states; every change a conditional UPDATE from an expected state.

    none ─► scheduled ─► queued ─► running ─► success
      │                    ▲          ├─────► failed
      └─► upstream_failed  │          └─────► up_for_retry ─┘ (after retry_delay, try + 1)

    any unfinished state ─► canceled (the run is canceled: `scheduler.cancel`)
    any state but queued and running ─► none (cleared: `scheduler.clear`, try + 1 next)

Two parties (two schedulers, a scheduler and a late worker, a retried worker and its ghost)
can never both win a transition: each UPDATE names the state (and try) it expects, and the
loser sees rowcount 0.

A conditional UPDATE guards one row; deciding what comes next reads the siblings. Under
PostgreSQL's READ COMMITTED, two transactions that each end one of two sibling tasks would each
read the other still running, and nobody would ready the join or settle the run (write skew).
So every transaction that changes a task and then decides from its siblings first locks the
run's row (SELECT ... FOR UPDATE), and the lock order is always: runs in ascending id, then
their task instances. SQLite has one writer at a time and needs no lock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from dagstore.models import Repo
from dagstore.protocol import JobPayload
from scheduler.models import DagRun, TaskInstance
from scheduler.runs import ACTIVE_RUN_STATES

TERMINAL = frozenset({"success", "failed", "upstream_failed", "canceled"})
FAILED = frozenset({"failed", "upstream_failed", "canceled"})
# A task in one of these states will move its run along by itself (a worker or the scheduler
# acts on it); a run with none of them can only move if someone evaluates it again.
MOVING = ("scheduled", "queued", "running", "up_for_retry")


def transition(
    session: Session,
    ti_id: int,
    expected: tuple[str, ...],
    expected_try: int | None = None,
    stale_before: datetime | None = None,
    expected_attempt: str | None = None,
    **values: Any,
) -> bool:
    """Apply `values` only if the task is still in an expected state (and try, and attempt,
    and silent)."""
    query = update(TaskInstance).where(TaskInstance.id == ti_id, TaskInstance.state.in_(expected))
    if expected_try is not None:
        query = query.where(TaskInstance.try_number == expected_try)
    if expected_attempt is not None:
        query = query.where(TaskInstance.attempt == expected_attempt)
    if stale_before is not None:
        query = query.where(TaskInstance.heartbeat_at < stale_before)
    # Readers reload rows (populate_existing), so skip SQLAlchemy's in-Python evaluation of
    # the WHERE against loaded objects (SQLite's naive datetimes would not compare).
    query = query.values(**values).execution_options(synchronize_session=False)
    return session.execute(query).rowcount == 1


def schedule_ready(session: Session, run: DagRun, now: datetime) -> int:
    """none → scheduled once every upstream succeeded; → upstream_failed once one failed.
    Returns how many tasks became scheduled. The caller holds the run's lock, or created the
    run in this transaction.

    Only tasks still in `none` can move, so only they (and their upstreams' states) are read:
    in a fan-out of 1,000 tasks most finishes find none left and cost one small query.
    """
    pending = session.execute(
        select(TaskInstance.id, TaskInstance.task_id, TaskInstance.upstream).where(
            TaskInstance.run_pk == run.id, TaskInstance.state == "none"
        )
    ).all()
    if not pending:
        settle_run(session, run, present_states(session, run.id), now)
        return 0
    states = run_states(session, run.id)
    scheduled = 0
    changed = True
    while changed:  # one pass per level, so a failure reaches the end of a chain at once
        changed = False
        for ti_id, task_id, upstream in pending:
            if states[task_id] != "none":
                continue
            ups = [states[u] for u in upstream or [] if u in states]
            if any(state in FAILED for state in ups):
                new, extra = "upstream_failed", {"ended_at": now}
            elif all(state == "success" for state in ups):
                new, extra = "scheduled", {}
            else:
                continue
            if transition(session, ti_id, ("none",), state=new, **extra):
                states[task_id] = new
                scheduled += new == "scheduled"
                changed = True
    settle_run(session, run, set(states.values()), now)
    return scheduled


def present_states(session: Session, run_pk: int) -> set[str]:
    """The distinct states of a run's tasks: all that settling the run needs to know."""
    query = select(TaskInstance.state).where(TaskInstance.run_pk == run_pk).distinct()
    return set(session.scalars(query))


def run_states(session: Session, run_pk: int) -> dict[str, str]:
    """task_id → state for a run: two short columns, not the ORM objects with their results."""
    rows = session.execute(
        select(TaskInstance.task_id, TaskInstance.state).where(TaskInstance.run_pk == run_pk)
    )
    return dict(rows.tuples().all())


def settle_run(session: Session, run: DagRun, states: set[str], now: datetime) -> None:
    """A run ends success or failed when all its tasks are done; it runs once one is queued.

    `states` are the distinct states of the run's tasks."""
    if all(state in TERMINAL for state in states):
        final = "success" if all(state == "success" for state in states) else "failed"
        session.execute(
            update(DagRun)
            .where(DagRun.id == run.id, DagRun.state.in_(("queued", "running")))
            .values(state=final, ended_at=now)
            .execution_options(synchronize_session=False)
        )
        session.expire(run, ["state", "ended_at"])  # read back from the row if asked
    elif run.state == "queued" and any(state not in ("none", "scheduled") for state in states):
        start_run(session, run.id, now)
        session.expire(run, ["state", "started_at"])


def start_run(session: Session, run_pk: int, now: datetime) -> None:
    """queued → running; a no-op when the run already runs (or ended). A loaded DagRun is not
    refreshed: expire it if its state will be read in this session."""
    session.execute(
        update(DagRun)
        .where(DagRun.id == run_pk, DagRun.state == "queued")
        .values(state="running", started_at=now)
        .execution_options(synchronize_session=False)
    )


def queue_ready(
    session: Session, now: datetime, run_pk: int | None = None, limit: int = 500
) -> list[JobPayload]:
    """scheduled (or up_for_retry whose delay passed) → queued with the next try number."""
    ready = or_(
        TaskInstance.state == "scheduled",
        and_(TaskInstance.state == "up_for_retry", TaskInstance.next_try_at <= now),
    )
    query = (
        select(TaskInstance, DagRun, Repo.name)
        .join(DagRun, DagRun.id == TaskInstance.run_pk)
        .join(Repo, Repo.id == DagRun.repo_id)
        .where(ready)
        .order_by(TaskInstance.id)
        .limit(limit)
    )
    if run_pk is not None:
        query = query.where(TaskInstance.run_pk == run_pk)
    payloads = []
    for ti, run, repo_name in session.execute(query).tuples().all():
        next_try = ti.try_number + 1
        if transition(
            session,
            ti.id,
            (ti.state,),
            ti.try_number,
            state="queued",
            try_number=next_try,
            queued_at=now,
            next_try_at=None,
        ):
            payloads.append(payload(ti, run, repo_name, next_try))
    return payloads


def payload(ti: TaskInstance, run: DagRun, repo_name: str, try_number: int) -> JobPayload:
    return JobPayload(
        ti_id=ti.id,
        try_number=try_number,
        run_id=run.run_id,
        repo=repo_name,
        sha=ti.sha or run.sha,
        fileloc=ti.fileloc or run.fileloc,
        dag_id=run.dag_id,
        task_id=ti.task_id,
        queue=ti.queue,
        timeout=ti.timeout,
    )


def settle_stuck(session: Session, now: datetime, limit: int = 100) -> list[str]:
    """The safety net: active runs with no moving task are evaluated again, under their lock.

    Such a run cannot move by itself: whatever should have readied its next task or ended it
    did not happen (a bug, or a crash between two writes of an older version). Runs another
    transaction holds are skipped: it is moving them. Returns the run ids it moved.
    """
    moving = (
        select(TaskInstance.id)
        .where(TaskInstance.run_pk == DagRun.id, TaskInstance.state.in_(MOVING))
        .exists()
    )
    query = (
        select(DagRun)
        .where(DagRun.state.in_(ACTIVE_RUN_STATES), ~moving, ~DagRun.held)
        .order_by(DagRun.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    moved = []
    for run in session.scalars(query).all():
        before = run.state
        if schedule_ready(session, run, now) or run.state != before:
            moved.append(run.run_id)
    return moved
