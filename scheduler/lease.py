"""Leases: which scheduler works on which DAG right now.

A lease is taken with a conditional UPDATE that only one scheduler can win (PostgreSQL re-checks
the WHERE after a concurrent update; SQLite has one writer). It names its holder, expires by
the database's clock, and bumps a fencing counter, so a scheduler that stalled past its lease
cannot write over the work of the one that took over: its writes check the fence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, or_, select, update
from sqlalchemy.orm import Session

from dagstore.core.models import Dag
from scheduler.metrics import LEASE_TAKEOVERS


@dataclass(frozen=True, order=True)
class Lease:
    dag_pk: int
    holder: str
    fence: int


def _free(now: datetime):
    return or_(Dag.lease_until.is_(None), Dag.lease_until < now)


def lease_due_dags(
    session: Session, holder: str, now: datetime, ttl: float, limit: int = 10
) -> list[Lease]:
    """Lease up to `limit` due DAGs, furthest behind first (never computed ones before all), in
    one statement on PostgreSQL (two on SQLite, inside its one writer's transaction): a batch
    costs one round trip, not one per DAG. Leases taken over are counted (LEASE_TAKEOVERS).

    On PostgreSQL the candidates are locked with SKIP LOCKED, so a second scheduler leasing at
    the same moment takes the next DAGs instead of waiting for these; the UPDATE checks again
    that each is free. A DAG whose schedule ended is no candidate: its NULL due time means "no
    more ticks", not "not computed yet", and it must not take a place in every batch."""
    candidates = (
        select(Dag.id, Dag.lease_holder.label("previous"))
        .where(
            Dag.is_active.is_(True),
            Dag.is_paused.is_(False),
            Dag.schedule.is_not(None),
            Dag.schedule_ended.is_(False),
            or_(Dag.next_due_at.is_(None), Dag.next_due_at <= now),
            _free(now),
        )
        .order_by(Dag.next_due_at.asc().nulls_first(), Dag.id)
        .limit(limit)
    )
    take = update(Dag).values(
        lease_holder=holder,
        lease_until=now + timedelta(seconds=ttl),
        lease_fence=Dag.lease_fence + 1,
    )
    if session.get_bind().dialect.name == "postgresql":
        chosen = candidates.with_for_update(of=Dag, skip_locked=True).cte("candidates")
        query = take.where(Dag.id == chosen.c.id, _free(now)).returning(
            Dag.id, Dag.lease_fence, chosen.c.previous
        )
        rows = session.execute(query.execution_options(synchronize_session=False)).all()
    else:  # one writer (BEGIN IMMEDIATE): what is read here is what the UPDATE changes
        previous = {row.id: row.previous for row in session.execute(candidates)}
        query = take.where(Dag.id.in_(list(previous)), _free(now)).returning(
            Dag.id, Dag.lease_fence
        )
        taken = session.execute(query.execution_options(synchronize_session=False)).all()
        rows = [(dag_pk, fence, previous[dag_pk]) for dag_pk, fence in taken]
    # A lease is released with its holder cleared: one still named expired under a
    # scheduler that crashed or stalled, and this one takes its DAG over.
    LEASE_TAKEOVERS.inc(sum(1 for *_, previous in rows if previous is not None))
    return sorted(Lease(dag_pk, holder, fence) for dag_pk, fence, _ in rows)


def holds(session: Session, leases: list[Lease], now: datetime, columns: list[Any]) -> list[Row]:
    """`columns` of the DAG rows whose lease in `leases` is still ours and unexpired, locked in
    ascending id (the first level of `scheduler.locks`), in one query."""
    if not leases:
        return []
    fences = {lease.dag_pk: (lease.holder, lease.fence) for lease in leases}
    query = (
        select(Dag.id, Dag.lease_holder, Dag.lease_fence, *columns)
        .where(
            Dag.id.in_(list(fences)),
            Dag.lease_holder.in_({holder for holder, _ in fences.values()}),
            Dag.lease_until >= now,
        )
        .order_by(Dag.id)
        .with_for_update()
    )
    return [
        row
        for row in session.execute(query)
        if fences[row.id] == (row.lease_holder, row.lease_fence)
    ]


def release(session: Session, lease: Lease, until: datetime | None = None) -> bool:
    """Give the lease up; `until` keeps others off the DAG till then (a back-off)."""
    result = session.execute(
        update(Dag)
        .where(
            Dag.id == lease.dag_pk,
            Dag.lease_holder == lease.holder,
            Dag.lease_fence == lease.fence,
        )
        .values(lease_holder=None, lease_until=until)
    )
    return result.rowcount == 1
