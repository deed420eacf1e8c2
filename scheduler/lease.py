"""Leases: which scheduler works on which DAG right now.

A lease is taken with a conditional UPDATE that only one scheduler can win (PostgreSQL re-checks
the WHERE after a concurrent update; SQLite has one writer). It names its holder, expires by
the database's clock, and bumps a fencing counter, so a scheduler that stalled past its lease
cannot write over the work of the one that took over: its writes check the fence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from dagstore.models import Dag


@dataclass(frozen=True)
class Lease:
    dag_pk: int
    holder: str
    fence: int


def _free(now: datetime):
    return or_(Dag.lease_until.is_(None), Dag.lease_until < now)


def lease_due_dags(
    session: Session, holder: str, now: datetime, ttl: float, limit: int = 10
) -> list[Lease]:
    """Lease up to `limit` due DAGs, furthest behind first (never computed ones before all).

    A DAG whose schedule ended is no candidate: its NULL due time means "no more ticks", not
    "not computed yet", and it must not take a place in every batch."""
    candidates = (
        select(Dag.id)
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
    if session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    leases = []
    for dag_pk in session.scalars(candidates).all():
        fence = session.execute(
            update(Dag)
            .where(Dag.id == dag_pk, _free(now))
            .values(
                lease_holder=holder,
                lease_until=now + timedelta(seconds=ttl),
                lease_fence=Dag.lease_fence + 1,
            )
            .returning(Dag.lease_fence)
        ).scalar_one_or_none()
        if fence is not None:
            leases.append(Lease(dag_pk, holder, fence))
    return leases


def holds(session: Session, lease: Lease, now: datetime) -> Dag | None:
    """The DAG row, locked, if `lease` is still ours and unexpired; else None."""
    query = select(Dag).where(
        Dag.id == lease.dag_pk,
        Dag.lease_holder == lease.holder,
        Dag.lease_fence == lease.fence,
        Dag.lease_until >= now,
    )
    return session.scalars(query.with_for_update()).one_or_none()


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
