"""dagrun_timeout: a run that takes longer than its DAG allows fails.

Checked in the scheduler's recovery pass. Such a run is stopped as a cancel stops one (its
unfinished tasks `canceled`, running ones stopped by their worker at the next heartbeat,
`scheduler.cancel.stop_run`), but ends `failed`: it did not do its work in time. The clock is
the database's, from the run's start (its first task queued), as Airflow counts it. Runs are
locked with SKIP LOCKED in ascending id: one that a finish or a clear holds is looked at on
the next pass.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from dagstore.core.db import as_utc
from scheduler.cancel import stop_run
from scheduler.models import DagRun


def fail_timed_out(session: Session, now: datetime, limit: int = 100) -> list[str]:
    """Fail the running runs older than their dagrun_timeout; returns their run ids."""
    runs = session.scalars(
        select(DagRun)
        .where(DagRun.state == "running", DagRun.dagrun_timeout.is_not(None), ~DagRun.held)
        .order_by(DagRun.id)
        .limit(limit * 10)
    ).all()
    due = [r.id for r in runs if _overdue(r, now)][:limit]
    if not due:
        return []
    failed = []
    for run in session.scalars(
        select(DagRun)
        .where(DagRun.id.in_(due), DagRun.state == "running")
        .order_by(DagRun.id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).all():
        error = f"dagrun_timeout: the run took longer than {run.dagrun_timeout:g} s"
        stop_run(session, run, now, "failed", error, f"canceled: {error}")
        failed.append(run.run_id)
    return failed


def _overdue(run: DagRun, now: datetime) -> bool:
    started = as_utc(run.started_at)
    return (
        started is not None
        and run.dagrun_timeout is not None
        and started + timedelta(seconds=run.dagrun_timeout) < now
    )
