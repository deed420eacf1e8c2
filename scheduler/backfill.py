"""Backfills: one run per schedule tick of a date range, each pinned to one commit.

Every run is created at once (so the answer can say which ticks were created and which were
skipped), but *held*: a held run has no scheduled task and counts as active for nothing. The
backfill's `max_active_runs` decides how many of its runs are released at a time, oldest tick
first; a release schedules the run's first tasks as a trigger would. The scheduler's loop
releases more as runs end (`release_held`), and so does the API right after creating them.

The limit holds with any number of schedulers: a backfill's active runs are counted and
released under the backfill row's lock, and the only other way to make one of its runs active
again, a clear, takes that lock first and waits in line like any held run (`wait_again`).
See `scheduler.locks` for the order these locks are taken in.

A tick that already has a scheduled (or backfilled) run is skipped: backfill runs take the
same unique key as scheduled runs, `(dag_id, scheduled_key)`, under the DAG row's lock, which
a scheduler also takes before it creates scheduled runs. A tick is never run twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from dagstore.core.db import iso
from dagstore.core.errors import BadRequest
from dagstore.core.models import Dag
from scheduler.models import Backfill, DagRun
from scheduler.runs import ACTIVE_RUN_STATES, create_run, taken_ticks
from scheduler.taskstate import schedule_ready
from scheduler.timetable import ticks_between

MAX_TICKS = 10_000
COUNT_TO = 1_000_000  # past this a range is "more than" that many ticks


@dataclass
class Created:
    backfill: Backfill
    created: list[str] = field(default_factory=list)  # run ids
    skipped: list[dict[str, Any]] = field(default_factory=list)  # tick, run_id that has it


def create_backfill(
    session: Session,
    dag_id: str,
    sha: str,
    fileloc: str,
    structure: dict[str, Any],
    start: datetime,
    end: datetime,
    max_active_runs: int | None,
    who: str,
) -> Created:
    """The backfill and its held runs (in the caller's transaction)."""
    if end < start:
        raise BadRequest(f"end {end.isoformat()} is before start {start.isoformat()}")
    if structure.get("schedule") is None:
        raise BadRequest(f"DAG {dag_id!r} has no schedule at {sha[:12]}: nothing to backfill")
    ticks, count = ticks_between(structure, start, end, MAX_TICKS, COUNT_TO)
    if count > MAX_TICKS:
        many = f"more than {COUNT_TO:,}" if count >= COUNT_TO else f"{count:,}"
        raise BadRequest(f"the range has {many} ticks; a backfill may have at most {MAX_TICKS:,}")
    if not ticks:
        raise BadRequest("the schedule has no tick in that range")
    dag = session.scalar(select(Dag).where(Dag.dag_id == dag_id).with_for_update())
    assert dag is not None
    limit = max_active_runs or int(structure.get("max_active_runs") or 16)
    backfill = Backfill(
        dag_id=dag_id,
        sha=sha,
        start=start,
        end=end,
        max_active_runs=limit,
        created_by=who,
    )
    session.add(backfill)
    session.flush()
    keys = [tick.isoformat() for tick in ticks]
    taken = taken_ticks(session, dag_id, keys)
    out = Created(backfill)
    for tick, key in zip(ticks, keys, strict=True):
        if key in taken:
            out.skipped.append({"logical_date": key, "run_id": taken[key]})
            continue
        run = create_run(
            session,
            dag_id=dag_id,
            repo_id=dag.repo_id,
            sha=sha,
            fileloc=fileloc,
            structure=structure,
            logical_date=tick,
            run_type="backfill",
            created_by=who,
        )
        run.backfill_id, run.held = backfill.id, True
        out.created.append(run.run_id)
    session.flush()
    return out


def release_held(session: Session, now: datetime, backfill_id: int | None = None) -> int:
    """Start held backfill runs up to each backfill's max_active_runs; returns how many.

    Each backfill is locked, then counted, then released: a second scheduler (or a clear)
    cannot count before this one's releases commit. A backfill another transaction holds is
    skipped, not waited for: that one is releasing its runs (or clearing one) right now, and
    the next tick looks again."""
    waiting = (
        select(DagRun.id)
        .where(DagRun.backfill_id == Backfill.id, DagRun.held, DagRun.state.in_(ACTIVE_RUN_STATES))
        .exists()
    )
    query = select(Backfill.id, Backfill.max_active_runs).where(waiting)
    if backfill_id is not None:
        query = query.where(Backfill.id == backfill_id)
    locked = session.execute(query.order_by(Backfill.id).with_for_update(skip_locked=True))
    released = 0
    for locked_id, limit in locked.all():
        active = session.scalar(
            select(func.count())
            .select_from(DagRun)
            .where(
                DagRun.backfill_id == locked_id,
                ~DagRun.held,
                DagRun.state.in_(ACTIVE_RUN_STATES),
            )
        )
        room = limit - (active or 0)
        if room <= 0:
            continue
        runs = session.scalars(
            select(DagRun)
            .where(
                DagRun.backfill_id == locked_id,
                DagRun.held,
                DagRun.state.in_(ACTIVE_RUN_STATES),
            )
            .order_by(DagRun.logical_date, DagRun.id)
            .limit(room)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        ).all()
        for run in runs:
            session.execute(
                update(DagRun)
                .where(DagRun.id == run.id, DagRun.held)
                .values(held=False)
                .execution_options(synchronize_session=False)
            )
            schedule_ready(session, run, now)
            released += 1
    return released


def wait_again(session: Session, run: DagRun, now: datetime) -> None:
    """A cleared run of a backfill takes its place in the backfill's line again, held as before
    its first start, and starts (in this transaction) only if the backfill has room: a clear
    never runs more of a backfill at once than its max_active_runs. The caller holds the
    backfill's lock, then the run's (`scheduler.locks`), and has reset the run's tasks."""
    session.execute(
        update(DagRun)
        .where(DagRun.id == run.id)
        .values(held=True, state="queued", ended_at=None)
        .execution_options(synchronize_session=False)
    )
    session.expire(run, ["held", "state", "ended_at"])
    release_held(session, now, run.backfill_id)


def backfill_json(session: Session, backfill: Backfill) -> dict[str, Any]:
    rows = session.execute(
        select(DagRun.state, DagRun.held, func.count())
        .where(DagRun.backfill_id == backfill.id)
        .group_by(DagRun.state, DagRun.held)
    ).all()
    states: dict[str, int] = {}
    for state, _held, count in rows:
        states[state] = states.get(state, 0) + count
    held = sum(count for state, is_held, count in rows if is_held and state in ACTIVE_RUN_STATES)
    return {
        "id": backfill.id,
        "dag_id": backfill.dag_id,
        "sha": backfill.sha,
        "start": iso(backfill.start),
        "end": iso(backfill.end),
        "max_active_runs": backfill.max_active_runs,
        "runs": sum(states.values()),
        "states": states,
        "held": held,
        "done": sum(n for s, n in states.items() if s not in ACTIVE_RUN_STATES),
    }
