"""Deleting old history: finished runs with their task instances, tries and logs.

Nothing else ever deletes a run, so a year of runs is a year of rows (issue 33). `pinflow db
clean --older-than 90d` and a scheduler set with PINFLOW_CLEAN_OLDER_THAN delete runs that
ended before the cutoff, in batches of a few hundred runs, each its own short transaction, so
no writer waits long for it and a clean can be stopped at any point.

What is never deleted, whatever its age:
- a run that is not finished (queued, running, or a backfill's held run);
- the newest run of each DAG (what the DAG list shows as its latest state; Airflow keeps it
  for the same reason);
- any run of a backfill that still has a run not finished: its record stays whole until it
  ends.
Git versions and keep refs are not touched: a pin outlives the history of the runs that used
it. A backfill record goes once none of its runs is left.

Safe against everything else that runs at the same time: the runs of a batch are locked in
ascending id (`scheduler.locks`, level 3) with SKIP LOCKED (a run a clear or a finish holds is
left for the next pass), and the lock re-checks the conditions on the row as it is now, so a
run cleared back to `queued` meanwhile is not deleted. On SQLite a batch is one
`BEGIN IMMEDIATE` transaction: the one writer at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, exists, func, not_, or_, select
from sqlalchemy.orm import Session, aliased

from dagstore.core.db import Database, db_time
from dagstore.core.errors import BadRequest, NotFound
from dagstore.core.models import Dag
from scheduler.models import Backfill, DagRun, TaskInstance, TaskTry
from scheduler.runs import ACTIVE_RUN_STATES

log = logging.getLogger("pinflow.clean")

FINISHED_RUN_STATES = ("success", "failed", "canceled")
BATCH = 500  # runs per transaction: their tasks and tries go with them (~ms per batch)


@dataclass
class Cleaned:
    """What a clean deleted (or, dry, would delete)."""

    cutoff: datetime
    dry_run: bool = False
    runs: int = 0
    task_instances: int = 0
    tries: int = 0
    log_chars: int = 0
    backfills: int = 0
    batches: int = 0
    more: bool = False  # stopped at `max_batches` with runs still to delete

    def add(self, other: Cleaned) -> None:
        self.runs += other.runs
        self.task_instances += other.task_instances
        self.tries += other.tries
        self.log_chars += other.log_chars
        self.backfills += other.backfills

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"{verb} {self.runs:,} runs, {self.task_instances:,} task instances, "
            f"{self.tries:,} tries ({_megabytes(self.log_chars)} of logs), "
            f"{self.backfills:,} backfill records; ended before {self.cutoff.isoformat()}"
        )


def _megabytes(chars: int) -> str:
    return f"{chars / 1e6:,.1f} MB" if chars >= 100_000 else f"{chars:,} bytes"


def check_age(age: timedelta) -> timedelta:
    if age <= timedelta(0):
        raise BadRequest("--older-than must be more than 0: it would delete the runs of today")
    return age


def _deletable(cutoff: datetime, dag_id: str | None) -> ColumnElement[bool]:
    """The runs a clean may delete (see the module's docstring)."""
    newer = aliased(DagRun)
    sibling = aliased(DagRun)
    conditions = [
        DagRun.state.in_(FINISHED_RUN_STATES),
        DagRun.ended_at < cutoff,
        # Not the DAG's newest: one index entry (dag_id, id) read per run.
        exists().where(newer.dag_id == DagRun.dag_id, newer.id > DagRun.id),
        or_(
            DagRun.backfill_id.is_(None),
            not_(
                exists().where(
                    sibling.backfill_id == DagRun.backfill_id,
                    sibling.state.in_(ACTIVE_RUN_STATES),
                )
            ),
        ),
    ]
    if dag_id is not None:
        conditions.append(DagRun.dag_id == dag_id)
    return and_(*conditions)


def clean_history(
    db: Database,
    older_than: timedelta,
    dag_id: str | None = None,
    dry_run: bool = False,
    batch: int = BATCH,
    max_batches: int | None = None,
) -> Cleaned:
    """Delete (or count, `dry_run`) the finished runs that ended more than `older_than` ago,
    `batch` runs per transaction, oldest first; at most `max_batches` batches."""
    check_age(older_than)
    with db.read() as session:
        cutoff = db_time(session) - older_than
        if dag_id is not None and not _dag_known(session, dag_id):
            raise NotFound(f"DAG {dag_id!r} does not exist and has no runs")
    total = Cleaned(cutoff=cutoff, dry_run=dry_run)
    after = 0
    while max_batches is None or total.batches < max_batches:
        with db.read() if dry_run else db.write() as session:
            ids = _next_batch(session, cutoff, dag_id, after, batch, lock=not dry_run)
            if not ids:
                break
            done = _count(session, ids, cutoff) if dry_run else _delete(session, ids, cutoff)
        total.add(done)
        total.batches += 1
        after = ids[-1]
    else:
        total.more = True
    if not dry_run:
        with db.write() as session:
            total.backfills = _delete_empty_backfills(session, cutoff, dag_id)
    else:
        with db.read() as session:
            total.backfills = _empty_backfills(session, cutoff, dag_id)
    if total.runs and not dry_run:
        log.info("history clean: %s", total.summary())
    return total


def _dag_known(session: Session, dag_id: str) -> bool:
    return bool(
        session.scalar(select(Dag.id).where(Dag.dag_id == dag_id))
        or session.scalar(select(DagRun.id).where(DagRun.dag_id == dag_id).limit(1))
    )


def _next_batch(
    session: Session, cutoff: datetime, dag_id: str | None, after: int, batch: int, lock: bool
) -> list[int]:
    query = (
        select(DagRun.id)
        .where(DagRun.id > after, _deletable(cutoff, dag_id))
        .order_by(DagRun.id)
        .limit(batch)
    )
    if lock:
        query = query.with_for_update(skip_locked=True, of=DagRun)
    return list(session.scalars(query))


def _tries_of(ids: Sequence[int]):  # noqa: ANN202 - a select of ids
    return select(TaskInstance.id).where(TaskInstance.run_pk.in_(ids))


def _count(session: Session, ids: Sequence[int], cutoff: datetime) -> Cleaned:
    tis = session.scalar(select(func.count()).where(TaskInstance.run_pk.in_(ids))) or 0
    tries, chars = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(func.length(TaskTry.log) + func.length(TaskTry.log_tail)), 0),
        ).where(TaskTry.ti_id.in_(_tries_of(ids)))
    ).one()
    return Cleaned(cutoff, True, len(ids), tis, tries, int(chars))


def _delete(session: Session, ids: Sequence[int], cutoff: datetime) -> Cleaned:
    """Delete the locked runs `ids` from the bottom up (tries, tasks, runs): the same rows a
    cascade would take, counted."""
    counted = _count(session, ids, cutoff)
    session.execute(
        delete(TaskTry)
        .where(TaskTry.ti_id.in_(_tries_of(ids)))
        .execution_options(synchronize_session=False)
    )
    session.execute(
        delete(TaskInstance)
        .where(TaskInstance.run_pk.in_(ids))
        .execution_options(synchronize_session=False)
    )
    session.execute(
        delete(DagRun).where(DagRun.id.in_(ids)).execution_options(synchronize_session=False)
    )
    counted.dry_run = False
    return counted


def _empty_backfill_query(cutoff: datetime, dag_id: str | None, of_runs: bool = True):  # noqa: ANN202
    query = select(Backfill.id).where(Backfill.created_at < cutoff)
    if of_runs:
        query = query.where(~exists().where(DagRun.backfill_id == Backfill.id))
    if dag_id is not None:
        query = query.where(Backfill.dag_id == dag_id)
    return query


def _delete_empty_backfills(session: Session, cutoff: datetime, dag_id: str | None) -> int:
    """Backfill records none of whose runs is left (locked first: a release holds them)."""
    ids = list(
        session.scalars(
            _empty_backfill_query(cutoff, dag_id)
            .order_by(Backfill.id)
            .with_for_update(skip_locked=True, of=Backfill)
        )
    )
    if ids:
        session.execute(
            delete(Backfill)
            .where(Backfill.id.in_(ids), ~exists().where(DagRun.backfill_id == Backfill.id))
            .execution_options(synchronize_session=False)
        )
    return len(ids)


def _empty_backfills(session: Session, cutoff: datetime, dag_id: str | None) -> int:
    """Dry: the backfill records the clean would delete: every run of theirs would go."""
    kept = aliased(DagRun)
    stays = exists().where(
        kept.backfill_id == Backfill.id,
        kept.id.not_in(select(DagRun.id).where(_deletable(cutoff, dag_id))),
    )
    return len(list(session.scalars(_empty_backfill_query(cutoff, dag_id, False).where(~stays))))
