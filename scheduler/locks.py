"""The one lock order of the scheduling tables. Every writer takes its row locks in it.

Under PostgreSQL's READ COMMITTED two transactions that lock the same rows in opposite orders
deadlock (PostgreSQL then aborts one: an operator's cancel answered 500, a worker's heartbeat
lost), and a count that decides how much may start is only true while nothing can add to it.
So every transaction that writes these tables locks, from the top down, never back up:

    1. dags            ascending id   the lease, a batch of new runs, a backfill's creation,
                                      queueing under max_active_tasks
    2. backfills       ascending id   releasing held runs, clearing a backfill's run
    3. dag_runs        ascending id   claim, finish, lost tries, clear, cancel, release
    3b. pools          ascending name queueing pooled tasks (never taken with a run's lock)
    4. task_instances  of a run whose lock it holds, ascending id
    5. task_tries      of a task instance whose lock it holds

A writer may start lower (a heartbeat starts at its task instance) and may skip a level. After
it is done with one run it may go on to a run of a higher id (the lost-try check): the order
is then (run id, table, row id), which is the same for everyone. Four writers take a row
without the run's lock above it, or after a row below it; each is safe because it never waits
for a lock while it holds one that the transaction it waits for wants next:
- a heartbeat locks its running task instance, then that try (never the run, never a sibling);
- the scheduler queueing tasks (`taskstate.queue_ready`) locks scheduled and retrying task
  instances in ascending id and nothing after them; every writer that locks several task
  instances of a run does so in ascending id too (`lock_tasks`);
- `taskstate.schedule_ready` (after a finish, a clear, a release) locks only tasks in `none`,
  which change only under the run's lock its caller holds: it never waits, even after a try;
- a lock taken with SKIP LOCKED never waits, wherever it comes (a clear releasing its
  backfill's held runs after it locked its own run's tasks).

Two rules come with the order:
- Whatever changes a task and then reads its siblings to decide what comes next (finish,
  claim, clear, cancel, release) locks the run first: otherwise two transactions each read
  the other's task unchanged (write skew, see PITFALLS.md).
- A count that limits what starts is taken under the lock of the row that holds the limit,
  and everything that adds to the count takes that lock first: a backfill's active runs
  (`backfill.release_held`, `clear` of a backfill's run) under the backfill's row; a pool's
  queued and running tasks under the pool's row, a DAG's under the DAG's row
  (`limits.queue_limited`, the only writer that queues a limited task).

Who takes what, in order (keep this table true when a writer changes):

    lease_due_dags       dags (SKIP LOCKED)
    schedule_batch       dags → the runs and task instances it inserts
    create_backfill      its dag → the backfill, runs and task instances it inserts
    release_held         backfills (SKIP LOCKED) → their held runs (SKIP LOCKED) → their tasks
    clear                the run's backfill, if any → the run → its tasks
    cancel               the run → its unfinished tasks → the tries of the running ones
    claim                the run → the task → its new try
    finish, fail_lost    the run → the task → its try → the run's tasks in `none`
    heartbeat (+ log)    the task → its try
    queue_ready          tasks (scheduled, retrying) not under a limit
    queue_limited        dags (of max_active_tasks) → pools → tasks under a limit: in a
                         transaction of its own, so it holds no run lock (`scheduler.limits`)
    fail_timed_out       runs (SKIP LOCKED) → their unfinished tasks → their tries
    settle_stuck         runs (SKIP LOCKED) → their tasks in `none`
    pause, a push        dags only (a push locks its repo's row first, which nothing here
                         takes: `dagstore.parsing.current`)

SQLite has one writer at a time (`BEGIN IMMEDIATE`, `dagstore.core.db`): these locks are no-ops
there, and the interleaving tests (`tests/scheduler/test_operator_locks.py`,
`test_run_locks.py`, `test_backfill_limits.py`) run on both.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from dagstore.core.errors import NotFound
from scheduler.models import Backfill, DagRun, TaskInstance


def lock_backfill_of(session: Session, run_id: str) -> int | None:
    """Lock the backfill of run `run_id` (before the run: level 2 of the order) and return its
    id; None for a run of no backfill. A run's backfill never changes, so it is read unlocked."""
    row = session.execute(select(DagRun.backfill_id).where(DagRun.run_id == run_id)).one_or_none()
    if row is None:
        raise NotFound(f"run {run_id!r} does not exist")
    if row.backfill_id is None:
        return None
    session.execute(select(Backfill.id).where(Backfill.id == row.backfill_id).with_for_update())
    return row.backfill_id


def lock_tasks(
    session: Session, run_pk: int, states: Sequence[str] | None = None
) -> list[TaskInstance]:
    """The run's task instances (those in `states`, if given), locked in ascending id and
    read afresh. The caller holds the run's lock."""
    query = (
        select(TaskInstance)
        .where(TaskInstance.run_pk == run_pk)
        .order_by(TaskInstance.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if states is not None:
        query = query.where(TaskInstance.state.in_(states))
    return list(session.scalars(query))
