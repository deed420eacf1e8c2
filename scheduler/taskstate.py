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
run's row (SELECT ... FOR UPDATE), in the one lock order every writer keeps: `scheduler.locks`.
SQLite has one writer at a time and needs no lock.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from dagstore.core.models import Repo
from dagstore.core.protocol import JobPayload
from scheduler.metrics import RUNS_FINISHED, count_on_commit
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
    expected_grant: str | None = None,
    **values: Any,
) -> bool:
    """Apply `values` only if the task is still in an expected state (and try, and attempt,
    and silent, and held under this try credential)."""
    params: dict[str, Any] = {"ti_id": ti_id, **new_values(values)}
    guards = []
    for guard, value in (
        ("try", expected_try),
        ("attempt", expected_attempt),
        ("stale", stale_before),
        ("grant", expected_grant),
    ):
        if value is not None:
            guards.append(guard)
            params[f"expected_{guard}"] = value
    statement = _transition(tuple(expected), tuple(guards), tuple(values))
    return session.execute(statement, params).rowcount == 1


_GUARDS = {
    "try": lambda: TaskInstance.try_number == bindparam("expected_try"),
    "attempt": lambda: TaskInstance.attempt == bindparam("expected_attempt"),
    "stale": lambda: TaskInstance.heartbeat_at < bindparam("expected_stale"),
    "grant": lambda: TaskInstance.grant_hash == bindparam("expected_grant"),
}


@functools.lru_cache(maxsize=512)
def _transition(expected: tuple[str, ...], guards: tuple[str, ...], columns: tuple[str, ...]):
    """One UPDATE per shape of transition, built once: SQLAlchemy then skips building the
    statement and its cache key at every call (~240 → ~85 µs per statement on SQLite, and a
    task's claim, heartbeat and finish run a dozen of them)."""
    query = update(TaskInstance).where(
        TaskInstance.id == bindparam("ti_id"), TaskInstance.state.in_(expected)
    )
    for guard in guards:
        query = query.where(_GUARDS[guard]())
    # Readers reload rows (populate_existing), so skip SQLAlchemy's in-Python evaluation of
    # the WHERE against loaded objects (SQLite's naive datetimes would not compare).
    return query.values(new_columns(columns)).execution_options(synchronize_session=False)


def new_columns(columns: tuple[str, ...]) -> dict[str, Any]:
    """The SET clause of a prebuilt UPDATE: each column from its own `new_` parameter, so the
    parameters never clash with the WHERE's."""
    return {c: bindparam(f"new_{c}") for c in columns}


def new_values(values: dict[str, Any]) -> dict[str, Any]:
    """The parameters for `new_columns`."""
    return {f"new_{k}": v for k, v in values.items()}


_RUN_PK = bindparam("run_pk")
_PENDING = select(TaskInstance.id, TaskInstance.task_id, TaskInstance.upstream).where(
    TaskInstance.run_pk == _RUN_PK, TaskInstance.state == "none"
)
_PRESENT_STATES = select(TaskInstance.state).where(TaskInstance.run_pk == _RUN_PK).distinct()
_RUN_STATES = select(TaskInstance.task_id, TaskInstance.state).where(TaskInstance.run_pk == _RUN_PK)
_END_RUN = (
    update(DagRun)
    .where(DagRun.id == _RUN_PK, DagRun.state.in_(("queued", "running")))
    .values(state=bindparam("final"), ended_at=bindparam("now"))
    .execution_options(synchronize_session=False)
)
_START_RUN = (
    update(DagRun)
    .where(DagRun.id == _RUN_PK, DagRun.state == "queued")
    .values(state="running", started_at=bindparam("now"))
    .execution_options(synchronize_session=False)
)


class RunLike(Protocol):
    """What scheduling needs of a run: a loaded `DagRun`, or a locked row's two columns."""

    @property
    def id(self) -> int: ...

    @property
    def state(self) -> str: ...


def schedule_ready(session: Session, run: RunLike, now: datetime) -> int:
    """none → scheduled once every upstream succeeded; → upstream_failed once one failed.
    Returns how many tasks became scheduled. The caller holds the run's lock, or created the
    run in this transaction.

    Only tasks still in `none` can move, so only they (and their upstreams' states) are read:
    in a fan-out of 1,000 tasks most finishes find none left and cost one small query.
    """
    pending = session.execute(_PENDING, {"run_pk": run.id}).all()
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
    return set(session.scalars(_PRESENT_STATES, {"run_pk": run_pk}))


def run_states(session: Session, run_pk: int) -> dict[str, str]:
    """task_id → state for a run: two short columns, not the ORM objects with their results."""
    return {task_id: state for task_id, state in session.execute(_RUN_STATES, {"run_pk": run_pk})}


def settle_run(session: Session, run: RunLike, states: set[str], now: datetime) -> None:
    """A run ends success or failed when all its tasks are done; it runs once one is queued.

    `states` are the distinct states of the run's tasks."""
    if all(state in TERMINAL for state in states):
        final = "success" if all(state == "success" for state in states) else "failed"
        ended = session.execute(_END_RUN, {"run_pk": run.id, "final": final, "now": now})
        if ended.rowcount == 1:
            count_on_commit(session, RUNS_FINISHED.labels(final))
        _expire(session, run, "state", "ended_at")
    elif run.state == "queued" and any(state not in ("none", "scheduled") for state in states):
        start_run(session, run.id, now)
        _expire(session, run, "state", "started_at")


def _expire(session: Session, run: RunLike, *fields: str) -> None:
    """A loaded DagRun reads its changed columns back from the row if asked; a plain row
    (the finish path's, `scheduler.tries`) has nothing to refresh."""
    if isinstance(run, DagRun):
        session.expire(run, list(fields))


def start_run(session: Session, run_pk: int, now: datetime) -> None:
    """queued → running; a no-op when the run already runs (or ended). A loaded DagRun is not
    refreshed: expire it if its state will be read in this session."""
    session.execute(_START_RUN, {"run_pk": run_pk, "now": now})


def queue_ready(
    session: Session, now: datetime, run_pk: int | None = None, limit: int = 500
) -> list[JobPayload]:
    """scheduled (or up_for_retry whose delay passed) → queued with the next try number.

    Without the runs' locks: it locks only these task instances, in ascending id, as every
    writer that locks several does (`scheduler.locks`)."""
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
    for ti, run, repo_name in session.execute(query).all():
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
