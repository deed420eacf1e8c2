"""Task-instance states and run states; every change a conditional UPDATE from an expected state.

    none ─► scheduled ─► queued ─► running ─► success
      │                    ▲          ├─────► failed
      └─► upstream_failed  │          └─────► up_for_retry ─┘ (after retry_delay, try + 1)

Two parties (two schedulers, a scheduler and a late worker, a retried worker and its ghost)
can never both win a transition: each UPDATE names the state (and try) it expects, and the
loser sees rowcount 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ScalarSelect, and_, insert, or_, select, update
from sqlalchemy.orm import Session

from dagstore.errors import Conflict, NotFound
from dagstore.models import Repo
from dagstore.protocol import JobPayload
from scheduler.models import DagRun, TaskInstance, TaskTry

TERMINAL = frozenset({"success", "failed", "upstream_failed"})
FAILED = frozenset({"failed", "upstream_failed"})


def transition(
    session: Session,
    ti_id: int,
    expected: tuple[str, ...],
    expected_try: int | None = None,
    stale_before: datetime | None = None,
    **values: Any,
) -> bool:
    """Apply `values` only if the task is still in an expected state (and try, and silent)."""
    query = update(TaskInstance).where(TaskInstance.id == ti_id, TaskInstance.state.in_(expected))
    if expected_try is not None:
        query = query.where(TaskInstance.try_number == expected_try)
    if stale_before is not None:
        query = query.where(TaskInstance.heartbeat_at < stale_before)
    # Readers reload rows (populate_existing), so skip SQLAlchemy's in-Python evaluation of
    # the WHERE against loaded objects (SQLite's naive datetimes would not compare).
    query = query.values(**values).execution_options(synchronize_session=False)
    return session.execute(query).rowcount == 1


def schedule_ready(session: Session, run: DagRun, now: datetime) -> int:
    """none → scheduled once every upstream succeeded; → upstream_failed once one failed.
    Returns how many tasks became scheduled.

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


def start_run(session: Session, run_pk: int | ScalarSelect[int], now: datetime) -> None:
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
        sha=run.sha,
        fileloc=run.fileloc,
        dag_id=run.dag_id,
        task_id=ti.task_id,
        queue=ti.queue,
        timeout=ti.timeout,
    )


def get_ti(session: Session, ti_id: int) -> TaskInstance:
    ti = session.get(TaskInstance, ti_id, populate_existing=True)
    if ti is None:
        raise NotFound(f"task instance {ti_id} does not exist")
    return ti


def claim(session: Session, ti_id: int, try_number: int, worker: str, now: datetime) -> None:
    """queued → running for exactly this try; anything else is someone else's task now."""
    if not transition(
        session,
        ti_id,
        ("queued",),
        try_number,
        state="running",
        started_at=now,
        heartbeat_at=now,
        worker=worker,
        ended_at=None,
    ):
        ti = get_ti(session, ti_id)
        raise Conflict(
            f"task instance {ti_id} try {try_number} cannot be claimed: it is {ti.state} "
            f"at try {ti.try_number}"
        )
    session.execute(
        insert(TaskTry).values(
            ti_id=ti_id,
            try_number=try_number,
            state="running",
            worker=worker,
            started_at=now,
            log="",
        )
    )
    run_pk = select(TaskInstance.run_pk).where(TaskInstance.id == ti_id).scalar_subquery()
    start_run(session, run_pk, now)  # this task runs, so its run does


def heartbeat(session: Session, ti_id: int, try_number: int, now: datetime) -> None:
    if not transition(session, ti_id, ("running",), try_number, heartbeat_at=now):
        ti = get_ti(session, ti_id)
        raise Conflict(
            f"task instance {ti_id} try {try_number} is no longer running "
            f"(it is {ti.state} at try {ti.try_number})"
        )


@dataclass(frozen=True)
class Finished:
    run: DagRun
    state: str  # what the try left the task in: success, failed or up_for_retry
    scheduled: int  # downstream tasks that became ready

    @property
    def may_queue(self) -> bool:
        """Whether anything of this run can be ready to queue because of this finish."""
        return self.scheduled > 0 or self.state == "up_for_retry"


def finish(
    session: Session,
    ti_id: int,
    try_number: int,
    success: bool,
    now: datetime,
    result: Any = None,
    error: str | None = None,
    log: str | None = None,
    stale_before: datetime | None = None,
) -> Finished:
    """running → success, or failed / up_for_retry; then the run moves on."""
    ti = session.execute(
        select(
            TaskInstance.run_pk,
            TaskInstance.try_number,
            TaskInstance.max_tries,
            TaskInstance.retry_delay,
        ).where(TaskInstance.id == ti_id)
    ).one_or_none()
    if ti is None:
        raise NotFound(f"task instance {ti_id} does not exist")
    if success:
        values: dict[str, Any] = {
            "state": "success",
            "result": result,
            "error": None,
            "ended_at": now,
        }
    elif ti.try_number < ti.max_tries:
        values = {
            "state": "up_for_retry",
            "error": error,
            "ended_at": now,
            "next_try_at": now + timedelta(seconds=ti.retry_delay),
        }
    else:
        values = {"state": "failed", "error": error, "ended_at": now}
    if not transition(session, ti_id, ("running",), try_number, stale_before, **values):
        current = get_ti(session, ti_id)
        raise Conflict(
            f"task instance {ti_id} try {try_number} cannot finish: it is "
            f"{current.state} at try {current.try_number}"
        )
    try_values: dict[str, Any] = {
        "state": "success" if success else "failed",
        "ended_at": now,
        "error": error,
    }
    if log is not None:
        try_values["log"] = log
    session.execute(
        update(TaskTry)
        .where(TaskTry.ti_id == ti_id, TaskTry.try_number == try_number)
        .values(**try_values)
        .execution_options(synchronize_session=False)
    )
    run = session.get(DagRun, ti.run_pk, populate_existing=True)
    assert run is not None
    return Finished(run, values["state"], schedule_ready(session, run, now))


def fail_lost(session: Session, now: datetime, heartbeat_timeout: float) -> list[int]:
    """Running tries with no heartbeat for too long (worker died): failed, retried if allowed."""
    cutoff = now - timedelta(seconds=heartbeat_timeout)
    lost = session.scalars(
        select(TaskInstance).where(
            TaskInstance.state == "running", TaskInstance.heartbeat_at < cutoff
        )
    ).all()
    failed = []
    for ti in lost:
        message = (
            f"lost: no heartbeat for {heartbeat_timeout:g} s from worker "
            f"{ti.worker or '?'} (killed or cut off?)"
        )
        try:
            finish(session, ti.id, ti.try_number, False, now, error=message, stale_before=cutoff)
        except Conflict:
            continue  # it finished or heartbeated meanwhile
        failed.append(ti.id)
    return failed
