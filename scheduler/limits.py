"""Queueing tasks under a limit: a pool's slots, a DAG's max_active_tasks.

A pool (`pinflow pool set warehouse 2`) bounds how many task instances naming it are queued
or running at once, across every DAG, run and scheduler; a DAG's max_active_tasks bounds its
own tasks the same way. A count that limits what starts is true only while nothing can add
to it (`scheduler.locks`), so the scheduler's loop queues these tasks in a transaction of
their own that first locks the rows holding the limits, from the top of the lock order: the
DAG rows (ascending id), then the pool rows (ascending name), and only then counts and
queues the tasks (ascending id). Two schedulers thus take turns: the second counts after the
first's queued tasks are committed (READ COMMITTED reads anew per statement). Nothing else
makes a limited task queued: the batch, a trigger and a finish leave them `scheduled`.

A task naming a pool that does not exist waits (scheduled) until the pool is made.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from dagstore.core.models import Dag, Repo
from dagstore.core.protocol import JobPayload
from scheduler.models import DagRun, Pool, TaskInstance
from scheduler.taskstate import queue_one, ready_to_queue

OCCUPYING = ("queued", "running")


def queue_limited(session: Session, now: datetime, limit: int = 500) -> list[JobPayload]:
    """Queue ready tasks under a limit, as many as each limit has room for. Limits that are
    full are left out before tasks are picked, so a full pool's backlog never hides the
    ready tasks of another behind `limit`."""
    limited = and_(
        ready_to_queue(now),
        or_(TaskInstance.pool.is_not(None), DagRun.max_active_tasks.is_not(None)),
    )
    wanted = session.execute(
        select(TaskInstance.pool, DagRun.dag_id, func.max(DagRun.max_active_tasks))
        .join(DagRun, DagRun.id == TaskInstance.run_pk)
        .where(limited)
        .group_by(TaskInstance.pool, DagRun.dag_id)
    ).all()
    if not wanted:
        return []
    dag_ids = sorted({dag_id for _, dag_id, most in wanted if most})
    pools = sorted({pool for pool, _, _ in wanted if pool})
    if dag_ids:
        session.execute(
            select(Dag.id).where(Dag.dag_id.in_(dag_ids)).order_by(Dag.id).with_for_update()
        )
    slots = _lock_pools(session, pools)
    pool_used, dag_used = occupancy(session, pools, dag_ids)
    full_pools = [p for p in pools if pool_used[p] >= slots.get(p, 0)]
    dag_most = {dag_id: most for _, dag_id, most in wanted if most}
    full_dags = [d for d in dag_ids if dag_used[d] >= dag_most[d]]
    candidates = session.execute(
        select(TaskInstance, DagRun, Repo.name)
        .join(DagRun, DagRun.id == TaskInstance.run_pk)
        .join(Repo, Repo.id == DagRun.repo_id)
        .where(
            limited,
            or_(TaskInstance.pool.is_(None), TaskInstance.pool.not_in(full_pools)),
            DagRun.dag_id.not_in(full_dags),
        )
        .order_by(TaskInstance.id)
        .limit(limit)
    ).all()
    payloads = []
    for ti, run, repo_name in candidates:
        if ti.pool and pool_used[ti.pool] >= slots.get(ti.pool, 0):
            continue
        if run.max_active_tasks and dag_used[run.dag_id] >= run.max_active_tasks:
            continue
        queued = queue_one(session, ti, run, repo_name, now)
        if queued is None:
            continue
        payloads.append(queued)
        if ti.pool:
            pool_used[ti.pool] += 1
        dag_used[run.dag_id] += 1
    return payloads


def _lock_pools(session: Session, names: list[str]) -> dict[str, int]:
    if not names:
        return {}
    rows = session.execute(
        select(Pool.name, Pool.slots)
        .where(Pool.name.in_(names))
        .order_by(Pool.name)
        .with_for_update()
    )
    return dict(rows.all())


def occupancy(
    session: Session, pools: list[str], dag_ids: list[str]
) -> tuple[Counter[str], Counter[str]]:
    """Queued or running task instances per pool and per DAG."""
    pool_used: Counter[str] = Counter()
    dag_used: Counter[str] = Counter()
    if pools:
        pool_used.update(dict(session.execute(
            select(TaskInstance.pool, func.count())
            .where(TaskInstance.pool.in_(pools), TaskInstance.state.in_(OCCUPYING))
            .group_by(TaskInstance.pool)
        ).all()))  # fmt: skip
    if dag_ids:
        dag_used.update(dict(session.execute(
            select(DagRun.dag_id, func.count())
            .join(TaskInstance, TaskInstance.run_pk == DagRun.id)
            .where(DagRun.dag_id.in_(dag_ids), TaskInstance.state.in_(OCCUPYING))
            .group_by(DagRun.dag_id)
        ).all()))  # fmt: skip
    return pool_used, dag_used
