"""Task-instance states and run states; every change a conditional UPDATE from an expected state.

    none ─► scheduled ─► queued ─► running ─► success
      ├─► upstream_failed  ▲          ├─────► failed
      └─► skipped          │          └─────► up_for_retry ─┘ (after retry_delay, try + 1)

A task leaves `none` as its trigger rule decides from its upstreams' states
(`dagstore.authoring.rules`: the same rule `pinflow dags test` applies); a branch task's
finish skips the direct downstreams it did not choose, and skips spread by the rules. A mapped
task leaves `none` by expanding into its instances (`scheduler.expand`).

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

from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from dagstore.authoring.rules import RUN, SKIP, UPSTREAM_FAILED, WAIT, decide
from dagstore.core.models import Repo
from dagstore.core.protocol import JobPayload
from scheduler.expand import expand
from scheduler.metrics import RUNS_FINISHED, count_on_commit
from scheduler.models import DagRun, TaskInstance
from scheduler.runs import ACTIVE_RUN_STATES
from scheduler.transition import transition

TERMINAL = frozenset({"success", "failed", "upstream_failed", "canceled", "skipped"})
FAILED = frozenset({"failed", "upstream_failed", "canceled"})
# A run that ends with only these succeeded: skipped tasks are no failure, but a failed
# task always fails its run, whatever ran after it (a cleanup task never hides it).
SUCCEEDED = frozenset({"success", "skipped"})
# A task in one of these states will move its run along by itself (a worker or the scheduler
# acts on it); a run with none of them can only move if someone evaluates it again.
MOVING = ("scheduled", "queued", "running", "up_for_retry")


_RUN_PK = bindparam("run_pk")
_PENDING = select(
    TaskInstance.id,
    TaskInstance.task_id,
    TaskInstance.upstream,
    TaskInstance.trigger_rule,
    TaskInstance.map_index,
    TaskInstance.map_spec,
).where(TaskInstance.run_pk == _RUN_PK, TaskInstance.state == "none")
_PRESENT_STATES = select(TaskInstance.state).where(TaskInstance.run_pk == _RUN_PK).distinct()
_RUN_STATES = select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state).where(
    TaskInstance.run_pk == _RUN_PK
)
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
    """Each task in `none` moves as its trigger rule decides from its upstreams' states:
    scheduled (a mapped one expands into its instances), skipped or upstream_failed.
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
        for row in pending:
            if states[row.task_id].get(row.map_index) != "none":
                continue
            ups = [state for u in row.upstream or [] for state in states.get(u, {}).values()]
            decision = decide(row.trigger_rule, ups)
            if decision == WAIT:
                continue
            made = _leave_none(session, row, decision, now)
            if made:
                states[row.task_id].pop(row.map_index, None)
                states[row.task_id].update(made)
                scheduled += sum(state == "scheduled" for state in made.values())
                changed = True
    settle_run(session, run, {s for by_index in states.values() for s in by_index.values()}, now)
    return scheduled


_DECIDED = {SKIP: "skipped", UPSTREAM_FAILED: "upstream_failed"}


def _leave_none(session: Session, row: Any, decision: str, now: datetime) -> dict[int, str]:
    """Apply a rule's decision to one task in `none`: map_index → new state of what it
    became (several instances when a mapped task expands), {} when someone was faster."""
    if decision == RUN and row.map_spec and row.map_index < 0:
        _, made = expand(session, row.id, row.map_spec, now)
        return made
    if decision == RUN:
        new, extra = "scheduled", {}
    else:
        new, extra = _DECIDED[decision], {"ended_at": now}
    moved = transition(session, row.id, ("none",), state=new, **extra)
    return {row.map_index: new} if moved else {}


def present_states(session: Session, run_pk: int) -> set[str]:
    """The distinct states of a run's tasks: all that settling the run needs to know."""
    return set(session.scalars(_PRESENT_STATES, {"run_pk": run_pk}))


def run_states(session: Session, run_pk: int) -> dict[str, dict[int, str]]:
    """task_id → map_index → state for a run (map_index -1 for a task that is not mapped):
    three short columns, not the ORM objects with their results."""
    out: dict[str, dict[int, str]] = {}
    for task_id, map_index, state in session.execute(_RUN_STATES, {"run_pk": run_pk}):
        out.setdefault(task_id, {})[map_index] = state
    return out


def settle_run(session: Session, run: RunLike, states: set[str], now: datetime) -> None:
    """A run ends when all its tasks are done: success when each succeeded or was skipped,
    failed when any did not; it runs once one is queued. `states` are the distinct states
    of the run's tasks."""
    if all(state in TERMINAL for state in states):
        final = "success" if states <= SUCCEEDED else "failed"
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


def ready_to_queue(now: datetime) -> Any:
    """Scheduled, or retrying and its delay passed."""
    return or_(
        TaskInstance.state == "scheduled",
        and_(TaskInstance.state == "up_for_retry", TaskInstance.next_try_at <= now),
    )


def queue_ready(
    session: Session, now: datetime, run_pk: int | None = None, limit: int = 500
) -> list[JobPayload]:
    """scheduled (or up_for_retry whose delay passed) → queued with the next try number.
    Tasks under a limit (a pool, the DAG's max_active_tasks) are `scheduler.limits`' own.

    Without the runs' locks: it locks only these task instances, in ascending id, as every
    writer that locks several does (`scheduler.locks`)."""
    query = (
        select(TaskInstance, DagRun, Repo.name)
        .join(DagRun, DagRun.id == TaskInstance.run_pk)
        .join(Repo, Repo.id == DagRun.repo_id)
        .where(ready_to_queue(now), TaskInstance.pool.is_(None), DagRun.max_active_tasks.is_(None))
        .order_by(TaskInstance.id)
        .limit(limit)
    )
    if run_pk is not None:
        query = query.where(TaskInstance.run_pk == run_pk)
    payloads = []
    for ti, run, repo_name in session.execute(query).all():
        queued = queue_one(session, ti, run, repo_name, now)
        if queued is not None:
            payloads.append(queued)
    return payloads


def queue_one(
    session: Session, ti: TaskInstance, run: DagRun, repo_name: str, now: datetime
) -> JobPayload | None:
    """One ready task → queued with its next try; its job's payload, or None if it moved."""
    next_try = ti.try_number + 1
    if transition(session, ti.id, (ti.state,), ti.try_number, state="queued",
                  try_number=next_try, queued_at=now, next_try_at=None):  # fmt: skip
        return payload(ti, run, repo_name, next_try)
    return None


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
