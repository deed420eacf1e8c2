"""JSON shapes of runs and task instances (DESIGN.md's field names)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, String, and_, column, func, select, true, values
from sqlalchemy.orm import Session

from dagstore.core.db import as_utc, iso
from dagstore.core.errors import NotFound
from dagstore.core.models import Dag
from scheduler.models import DagRun, TaskInstance, TaskTry


def get_run(session: Session, run_id: str, lock: bool = False) -> DagRun:
    """The run; with `lock`, locked against every other change to it (in the order of
    `scheduler.locks`) and read afresh."""
    query = select(DagRun).where(DagRun.run_id == run_id)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    run = session.scalar(query)
    if run is None:
        raise NotFound(f"run {run_id!r} does not exist")
    return run


def run_json(run: DagRun, tasks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "run_id": run.run_id,
        "dag_id": run.dag_id,
        "logical_date": iso(run.logical_date),
        "sha": run.sha,
        "state": run.state,
        "conf": run.conf or {},
        "run_type": run.run_type,
        "held": bool(run.held),
        "created_by": run.created_by,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "ended_at": iso(run.ended_at),
    }
    if tasks is not None:
        body["tasks"] = tasks
        # Every commit a try of this run ran: more than one after a clear "on latest".
        ran = [t["sha"] for task in tasks for t in task["tries"]]
        body["shas"] = list(dict.fromkeys(ran or [run.sha]))
    return body


def newest_first(query: Select, *equal: tuple[Any, Any], by_logical_date: bool = False) -> Select:
    """`query` over runs, filtered on each (column, value) of `equal`, newest first (by id, or
    by logical date then id), read through the index on (columns..., [logical_date,] id) and
    stopped after its LIMIT whatever the history.

    Written as `column BETWEEN v AND v` and ordered by (columns..., id): with `column = v`
    PostgreSQL drops the constant columns from the order and, estimating a DAG's runs as
    spread evenly, may walk the primary key backwards dropping every other DAG's runs: all
    of them for a DAG with no runs (issue 33; tests/scheduler/test_history_plans.py)."""
    for filtered, value in equal:
        query = query.where(filtered.between(value, value))
    order = [filtered.desc() for filtered, _ in equal]
    if by_logical_date:
        order.append(DagRun.logical_date.desc())
    return query.order_by(*order, DagRun.id.desc())


def recent_runs(session: Session, dag_ids: list[str], per_dag: int) -> dict[str, list[dict]]:
    """The newest `per_dag` runs of each DAG, newest first: `per_dag` index entries read per
    DAG (`ix_dag_runs_dag_id`), however many runs each has (issue 33; a window over all
    runs read them all at every page load)."""
    out: dict[str, list[dict]] = {dag_id: [] for dag_id in dag_ids}
    if not dag_ids:
        return out
    newest = _newest_run_ids(session, dag_ids, per_dag)
    runs = session.scalars(select(DagRun).where(DagRun.id.in_(newest)).order_by(DagRun.id.desc()))
    for run in runs:
        out[run.dag_id].append(run_json(run))
    return out


def _newest_run_ids(session: Session, dag_ids: list[str], per_dag: int) -> Select:
    """The ids of each DAG's newest `per_dag` runs, as a subquery.

    PostgreSQL: per DAG a LATERAL `ORDER BY id DESC LIMIT n` over (dag_id, id). SQLite has no
    LATERAL: per DAG the id of its n-th newest run (a correlated `LIMIT 1 OFFSET n-1` on the
    same index), then the runs of that DAG from that id on, an index range. (SQLite cannot name
    a VALUES list's columns: the DAGs come from their table there, where every DAG that ever
    had a run stays.)"""
    if session.get_bind().dialect.name == "postgresql":
        wanted = values(column("dag_id", String), name="wanted").data([(d,) for d in dag_ids])
        top = (
            newest_first(select(DagRun.id), (DagRun.dag_id, wanted.c.dag_id))
            .limit(per_dag)
            .lateral("top")
        )
        return select(top.c.id).select_from(wanted).join(top, true())
    wanted = select(Dag.dag_id).where(Dag.dag_id.in_(dag_ids)).subquery("wanted")
    floor = (
        select(DagRun.id)
        .where(DagRun.dag_id == wanted.c.dag_id)
        .order_by(DagRun.id.desc())
        .limit(1)
        .offset(per_dag - 1)
        .scalar_subquery()
    )
    floors = select(wanted.c.dag_id, func.coalesce(floor, 0).label("floor")).subquery("floors")
    return select(DagRun.id).join(
        floors, and_(DagRun.dag_id == floors.c.dag_id, DagRun.id >= floors.c.floor)
    )


def run_grid(session: Session, dag_id: str, limit: int) -> list[dict[str, Any]]:
    """The DAG's `limit` latest runs by logical date, oldest first (a backfill of older dates
    lands where its dates are, not where it was created), each with its task instances: a
    grid in three bounded queries, whatever its size.

    Each run's `instances` are `(task_id, map_index, state, tries, seconds)`, one per task
    instance (`map_index` -1 for an unmapped one); `retried` says whether any task took more
    than one try, `shas` every commit its tries ran."""
    runs = session.scalars(
        newest_first(select(DagRun), (DagRun.dag_id, dag_id), by_logical_date=True).limit(limit)
    ).all()
    by_pk: dict[int, dict[str, Any]] = {
        run.id: {"run": run_json(run), "instances": [], "retried": False, "shas": [run.sha]}
        for run in runs
    }
    if not by_pk:
        return []
    # Core rows, not ORM ones: thousands of plain tuples, no identity map to feed.
    rows = session.connection().execute(
        select(
            TaskInstance.run_pk,
            TaskInstance.task_id,
            TaskInstance.map_index,
            TaskInstance.state,
            TaskInstance.try_number,
            TaskInstance.started_at,
            TaskInstance.ended_at,
        ).where(TaskInstance.run_pk.in_(list(by_pk)))
    )
    for run_pk, task_id, index, state, tries, started, ended in rows:
        column = by_pk[run_pk]
        column["instances"].append((task_id, index, state, tries, seconds_between(started, ended)))
        column["retried"] = column["retried"] or tries > 1
    ran = session.execute(
        select(TaskInstance.run_pk, TaskTry.sha)
        .join(TaskTry, TaskTry.ti_id == TaskInstance.id)
        .where(TaskInstance.run_pk.in_(list(by_pk)), TaskTry.sha.is_not(None))
        .distinct()
    )
    for run_pk, sha in ran:
        if sha not in by_pk[run_pk]["shas"]:
            by_pk[run_pk]["shas"].append(sha)
    return [by_pk[run.id] for run in reversed(runs)]


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    if (start.tzinfo is None) == (end.tzinfo is None):  # both from one database: no copies
        return (end - start).total_seconds()
    return (as_utc(end) - as_utc(start)).total_seconds()


def task_seconds(session: Session, dag_id: str, runs: int) -> dict[str, list[float]]:
    """task_id → how long its instances' last tries took, in the DAG's `runs` latest runs by
    logical date (finished ones only): what "slow" is judged against."""
    latest = (
        newest_first(select(DagRun.id), (DagRun.dag_id, dag_id), by_logical_date=True)
        .limit(runs)
        .subquery()
    )
    rows = session.connection().execute(  # Core rows: thousands, no identity map needed
        select(TaskInstance.task_id, TaskInstance.started_at, TaskInstance.ended_at).where(
            TaskInstance.run_pk.in_(select(latest.c.id)),
            TaskInstance.started_at.is_not(None),
            TaskInstance.ended_at.is_not(None),
        )
    )
    out: dict[str, list[float]] = {}
    for task_id, started, ended in rows:
        seconds = seconds_between(started, ended)
        if seconds is not None:
            out.setdefault(task_id, []).append(seconds)
    return out


def list_runs(
    session: Session,
    *,
    dag_id: str | None = None,
    state: str | None = None,
    run_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Runs by logical date, latest first, filtered; at most `limit` of them. Read through
    (dag_id, logical_date, id) or (logical_date, id): the state and type filters are checked
    on the way, so a rare state may read further back, never the whole table at once."""
    equal = [(DagRun.dag_id, dag_id)] if dag_id else []
    query = newest_first(select(DagRun), *equal, by_logical_date=True).limit(limit)
    if state:
        query = query.where(DagRun.state == state)
    if run_type:
        query = query.where(DagRun.run_type == run_type)
    if since is not None:
        query = query.where(DagRun.logical_date >= since)
    if until is not None:
        query = query.where(DagRun.logical_date < until)
    return [run_json(run) for run in session.scalars(query)]


def tasks_json(session: Session, run: DagRun) -> list[dict[str, Any]]:
    tis = session.scalars(
        select(TaskInstance)
        .where(TaskInstance.run_pk == run.id)
        .order_by(TaskInstance.id)  # a mapped task's instances by map_index, at its place
    ).all()
    first = {}
    for ti in tis:
        first.setdefault(ti.task_id, ti.id)
    tis = sorted(tis, key=lambda ti: (first[ti.task_id], ti.map_index))
    tries: dict[int, list[dict[str, Any]]] = {ti.id: [] for ti in tis}
    for t in session.scalars(
        select(TaskTry).where(TaskTry.ti_id.in_(list(tries))).order_by(TaskTry.try_number)
    ):
        tries[t.ti_id].append(
            {
                "try_number": t.try_number,
                "state": t.state,
                "sha": t.sha or run.sha,
                "worker": t.worker,
                "queued_at": iso(t.queued_at),
                "started_at": iso(t.started_at),
                "ended_at": iso(t.ended_at),
                "error": t.error,
            }
        )
    return [
        {
            "task_id": ti.task_id,
            "map_index": ti.map_index,
            "state": ti.state,
            "sha": ti.sha or run.sha,  # what its next (or current) try runs
            "try_number": ti.try_number,
            "max_tries": ti.max_tries,
            "retries": ti.retries,
            "upstream": ti.upstream,
            "trigger_rule": ti.trigger_rule or "all_success",
            "pool": ti.pool,
            "worker": ti.worker,
            "queued_at": iso(ti.queued_at),
            "started_at": iso(ti.started_at),
            "ended_at": iso(ti.ended_at),
            "result": ti.result,
            "error": ti.error,
            "tries": tries[ti.id],
        }
        for ti in tis
    ]
