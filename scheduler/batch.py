"""Creating the due runs of a batch of leased DAGs in one transaction, in a few statements.

One DAG per transaction cost ~13 ms, nearly all of it round trips (lock, count, read taken
ticks, insert the run, insert its tasks, schedule, queue, advance, release). A batch pays each
of those once for all its DAGs:

1. lock the leased DAG rows (one SELECT ... FOR UPDATE in ascending id, the first level of
   `scheduler.locks`: the lock a backfill takes too, so a tick that a backfill created is
   seen and left out, and the fences are checked under it);
2. count their active runs and read which of their due ticks have a run (one query each);
3. work out each DAG's due ticks in Python, as the timetable says;
4. insert every run (one multi-row INSERT ... RETURNING) and every task instance (one
   executemany), the roots of each new run already `scheduled` (nothing upstream to wait
   for: what `taskstate.schedule_ready` would do to a fresh run, without a query per run);
5. queue the new runs' scheduled tasks (one conditional UPDATE from `scheduled`, RETURNING
   what the RQ jobs need); the caller enqueues them after the commit. Tasks in a pool, and
   those of a DAG with max_active_tasks, are left `scheduled`: the scheduler's loop queues
   them under the limit's lock (`scheduler.limits`);
6. advance every DAG's due time and release every lease (one executemany, fenced).

A DAG whose due ticks or task rows cannot be worked out (a broken stored structure) is left
out of the batch and backed off there; the others' runs are created. A statement that fails
(the database refuses a row) rolls the whole batch back: the caller then schedules the batch's
DAGs one by one, so that only the DAG at fault is backed off (`Scheduler.schedule_leases`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, bindparam, insert, select, update
from sqlalchemy.orm import Session

from dagstore.authoring.rules import ALWAYS
from dagstore.core.models import Dag, Repo
from dagstore.core.protocol import JobPayload
from scheduler.lease import Lease, holds
from scheduler.models import DagRun, TaskInstance
from scheduler.runs import active_runs_of, run_row, taken_ticks_of, task_rows
from scheduler.taskstate import schedule_ready
from scheduler.timetable import due_runs

log = logging.getLogger("pinflow.scheduler")
BLOCKED_BACKOFF = 5.0  # seconds a DAG at max_active_runs is left alone
FAILED_BACKOFF = 30.0  # seconds a DAG whose scheduling raised is left alone
# A catchup of many DAGs is spread over several ticks rather than made one huge transaction
# that holds every DAG row's lock; the DAGs left over stay furthest behind, first next tick.
MAX_RUNS_PER_BATCH = 1000
DEFAULT_MAX_ACTIVE_RUNS = 16

_COLUMNS = [
    Dag.dag_id,
    Dag.repo_id,
    Dag.current_sha,
    Dag.fileloc,
    Dag.structure,
    Dag.is_paused,
    Dag.is_active,
    Dag.schedule,
    Dag.last_logical_date,
    Dag.next_due_at,
    Dag.schedule_ended,
]


@dataclass
class Outcome:
    """What a batch did: runs created, and the jobs to enqueue after the commit."""

    created: int = 0
    payloads: list[JobPayload] = field(default_factory=list)


@dataclass
class Plan:
    """One DAG's part of the batch: the ticks to create and the DAG row's values after it."""

    lease: Lease
    dag: Row
    dates: list[datetime] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)  # task rows, run_pk unset
    last: datetime | None = None
    next_due_at: datetime | None = None
    schedule_ended: bool = False
    until: datetime | None = None  # the released lease keeps others off till then

    @classmethod
    def unchanged(cls, lease: Lease, dag: Row, until: datetime | None = None) -> Plan:
        """Release the lease and leave the DAG as it is (paused, deferred, or backed off)."""
        return cls(lease, dag, last=dag.last_logical_date, next_due_at=dag.next_due_at,
                   schedule_ended=dag.schedule_ended, until=until)  # fmt: skip


def plan_dag(lease: Lease, dag: Row, active: int, now: datetime, budget: int) -> Plan:
    """The due ticks of one DAG, as many as its max_active_runs and the batch's budget allow;
    raises on a broken stored structure (before anything is written)."""
    structure = dag.structure or {}
    room = max(int(structure.get("max_active_runs") or DEFAULT_MAX_ACTIVE_RUNS) - active, 0)
    due = due_runs(structure, dag.last_logical_date, now, limit=min(room, budget) or 1)
    dates = due.logical_dates[:room]
    plan = Plan(lease, dag, dates, task_rows(0, structure))
    plan.last = dates[-1] if dates else dag.last_logical_date
    if len(dates) < len(due.logical_dates):  # blocked at max_active_runs: look again soon
        plan.next_due_at, plan.schedule_ended = dag.next_due_at, dag.schedule_ended
        plan.until = now + timedelta(seconds=BLOCKED_BACKOFF)
    else:
        plan.next_due_at, plan.schedule_ended = due.next_due_at, due.next_due_at is None
    return plan


def initial_state(task: dict[str, Any], task_ids: set[str]) -> str:
    """A fresh run's task is `scheduled` when nothing it waits for is in the run (as
    `schedule_ready` finds it: an upstream the run does not have is no upstream), or when
    its trigger rule is `always` (it runs without waiting). A mapped task stays `none`:
    `schedule_ready` expands it."""
    if task.get("map_spec"):
        return "none"
    if task.get("trigger_rule") == ALWAYS:
        return "scheduled"
    return "none" if any(up in task_ids for up in task["upstream"]) else "scheduled"


def schedule_batch(session: Session, leases: list[Lease], now: datetime, name: str) -> Outcome:
    """Create the due runs of the DAGs `leases` hold, in the caller's transaction."""
    by_pk = {lease.dag_pk: lease for lease in leases}
    dags = holds(session, leases, now, _COLUMNS)
    lost = sorted(set(by_pk) - {dag.id for dag in dags})
    if lost:
        log.warning("leases on DAGs %s lost before they were used", lost)
    plans = _plan(session, dags, by_pk, now)
    runs = _insert_runs(session, plans, now, name)
    payloads = _queue_roots(session, runs, now)
    _advance_and_release(session, plans)
    return Outcome(len(runs), payloads)


def _plan(session: Session, dags: list[Row], by_pk: dict[int, Lease], now: datetime) -> list[Plan]:
    """Each DAG's plan; a DAG whose plan raises is backed off, the others go on."""
    schedulable = [d for d in dags if d.is_active and not d.is_paused and d.schedule is not None]
    active = active_runs_of(session, [d.dag_id for d in schedulable]) if schedulable else {}
    plans, budget, due_ids = [], MAX_RUNS_PER_BATCH, {d.id for d in schedulable}
    for dag in dags:
        lease = by_pk[dag.id]
        if dag.id not in due_ids or budget <= 0:  # changed since leased, or next tick's
            plans.append(Plan.unchanged(lease, dag))
            continue
        try:
            plan = plan_dag(lease, dag, active.get(dag.dag_id, 0), now, budget)
        except Exception:  # noqa: BLE001 - one DAG must not stop the others
            log.exception("scheduling DAG %s failed; retrying in %g s", dag.id, FAILED_BACKOFF)
            plans.append(Plan.unchanged(lease, dag, now + timedelta(seconds=FAILED_BACKOFF)))
            continue
        budget -= len(plan.dates)
        plans.append(plan)
    return plans


@dataclass(frozen=True)
class NewRun:
    pk: int
    run_id: str
    dag: Row


def _insert_runs(session: Session, plans: list[Plan], now: datetime, name: str) -> list[NewRun]:
    """The runs of every plan's ticks that have none yet, and their task instances."""
    wanted = {p.dag.dag_id: [d.isoformat() for d in p.dates] for p in plans if p.dates}
    taken = taken_ticks_of(session, wanted) if wanted else {}
    rows, owners = [], {}
    for plan in plans:
        for date in plan.dates:
            if (plan.dag.dag_id, date.isoformat()) in taken:
                continue  # a backfill has that tick
            row = run_row(dag_id=plan.dag.dag_id, repo_id=plan.dag.repo_id,
                          sha=plan.dag.current_sha or "", fileloc=plan.dag.fileloc,
                          logical_date=date, run_type="scheduled",
                          created_by=f"scheduler:{name}",
                          structure=plan.dag.structure)  # fmt: skip
            rows.append(row)
            owners[row["run_id"]] = plan
    if not rows:
        return []
    returned = session.execute(insert(DagRun).returning(DagRun.id, DagRun.run_id), rows).all()
    runs = [NewRun(pk, run_id, owners[run_id].dag) for pk, run_id in returned]
    tasks, evaluate = [], []
    for run in runs:
        template = owners[run.run_id].tasks
        task_ids = {task["task_id"] for task in template}
        tasks += [{**task, "run_pk": run.pk, "state": initial_state(task, task_ids)}
                  for task in template]  # fmt: skip
        if not template or any(t["map_spec"] for t in template):
            evaluate.append(run.pk)
    if tasks:
        session.execute(insert(TaskInstance), tasks)
    # nothing to run (settles at once, as a single run would), or a mapped root to expand
    for run_pk in evaluate:
        schedule_ready(session, session.get_one(DagRun, run_pk), now)
    return runs


def _queue_roots(session: Session, runs: list[NewRun], now: datetime) -> list[JobPayload]:
    """scheduled → queued for the new runs' roots, in one conditional UPDATE."""
    if not runs:
        return []
    by_pk = {run.pk: run for run in runs}
    limited = {run.pk for run in runs if (run.dag.structure or {}).get("max_active_tasks")}
    free = [pk for pk in by_pk if pk not in limited]
    if not free:
        return []  # the scheduler's loop queues them, counting (`scheduler.limits`)
    queued = session.execute(
        update(TaskInstance)
        .where(TaskInstance.run_pk.in_(free), TaskInstance.state == "scheduled",
               TaskInstance.pool.is_(None))
        .values(state="queued", try_number=TaskInstance.try_number + 1, queued_at=now,
                next_try_at=None)
        .returning(TaskInstance.id, TaskInstance.run_pk, TaskInstance.task_id,
                   TaskInstance.try_number, TaskInstance.queue, TaskInstance.timeout)
        .execution_options(synchronize_session=False)
    ).all()  # fmt: skip
    if not queued:
        return []
    repo_ids = {run.dag.repo_id for run in runs}
    repos = dict(session.execute(select(Repo.id, Repo.name).where(Repo.id.in_(repo_ids))).all())
    payloads = []
    for ti_id, run_pk, task_id, try_number, queue, timeout in queued:
        run = by_pk[run_pk]
        payloads.append(
            JobPayload(ti_id=ti_id, try_number=try_number, run_id=run.run_id,
                       repo=repos[run.dag.repo_id], sha=run.dag.current_sha or "",
                       fileloc=run.dag.fileloc, dag_id=run.dag.dag_id, task_id=task_id,
                       queue=queue, timeout=timeout)
        )  # fmt: skip
    return sorted(payloads, key=lambda p: p.ti_id)


def _advance_and_release(session: Session, plans: list[Plan]) -> None:
    """Every DAG's new due time and its lease given up, in one fenced executemany."""
    if not plans:
        return
    table = Dag.__table__
    statement = (
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c.lease_holder == bindparam("b_holder"),
               table.c.lease_fence == bindparam("b_fence"))
        .values(last_logical_date=bindparam("b_last"), next_due_at=bindparam("b_next"),
                schedule_ended=bindparam("b_ended"), lease_holder=None,
                lease_until=bindparam("b_until"))
    )  # fmt: skip
    session.execute(
        statement,
        [
            {"b_id": p.lease.dag_pk, "b_holder": p.lease.holder, "b_fence": p.lease.fence,
             "b_last": p.last, "b_next": p.next_due_at, "b_ended": p.schedule_ended,
             "b_until": p.until}
            for p in plans
        ],
    )  # fmt: skip
