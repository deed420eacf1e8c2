"""Clearing tasks of a run so they run again: by default on the run's own commit.

A cleared task goes back to `none` with its try number kept, so its next try is a new number
and every earlier try stays on record with the sha it ran. It gets its retries again (as in
Airflow, a clear grants the DAG's retries anew). The run goes back to `running` and moves on
as tasks finish, exactly as if those tasks had never run.

"On latest" pins the cleared tasks (only them) to the DAG's current version: each task instance
then carries its own sha, and the run reports every sha its tries ran (`shas`). A current
version whose structure lacks a cleared task is refused: there would be nothing to run.

A mapped task's instances are cleared one by one (`load[2]`) or all at once (`load`); they
run again over the elements they were expanded with.

Queued and running tasks cannot be cleared (cancel the run first): a worker may be about to
run them, and a clear under its feet would leave two tries of one task alive.

A backfill's run stays inside its backfill's max_active_runs, as in Airflow: a cleared run
that waits for its turn (held) keeps waiting, and one that had ended takes its place in the
line again (`backfill.wait_again`), to start at once only when the backfill has room. Locks
in the order of `scheduler.locks`: the backfill (whose count a release takes under the same
lock), the run, its tasks in ascending id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from dagstore.authoring.mapping import instance_label
from dagstore.core.errors import Conflict, NotFound
from dagstore.core.models import Dag
from dagstore.parsing.dags import get_dag
from scheduler.backfill import wait_again
from scheduler.locks import lock_backfill_of, lock_tasks
from scheduler.models import DagRun, TaskInstance
from scheduler.runs import ACTIVE_RUN_STATES
from scheduler.taskstate import FAILED, schedule_ready
from scheduler.transition import transition
from scheduler.views import get_run

NOT_CLEARABLE = ("queued", "running")


@dataclass(frozen=True)
class ClearRequest:
    task_ids: list[str] | None = None
    failed_only: bool = False
    downstream: bool = False
    on_latest: bool = False


def clear(session: Session, run_id: str, request: ClearRequest, now: datetime) -> list[str]:
    """Clear what `request` selects in run `run_id`; returns the cleared task ids."""
    backfill_id = lock_backfill_of(session, run_id)
    run = get_run(session, run_id, lock=True)
    tis = {label(ti): ti for ti in lock_tasks(session, run.id)}
    chosen = _select(tis, request)
    if not chosen:
        raise Conflict(f"nothing to clear in run {run_id!r} (no task matches)")
    busy = sorted(t for t in chosen if tis[t].state in NOT_CLEARABLE)
    if busy:
        raise Conflict(
            f"cannot clear {', '.join(busy)}: {tis[busy[0]].state}; cancel the run first"
        )
    stale = _stale_expansions(tis, chosen)
    if stale:
        raise Conflict(
            f"cannot clear {', '.join(sorted(stale.values()))}: mapped task "
            f"{', '.join(map(repr, sorted(stale)))} was expanded over its result, and a clear "
            "does not expand it again yet (its instances would run over elements of another "
            "list); clear the mapped instances alone, or trigger a new run"
        )
    latest = _latest(session, run, {tis[t].task_id for t in chosen}) if request.on_latest else None
    for task_id in sorted(chosen, key=lambda t: tis[t].id):
        ti = tis[task_id]
        values = _cleared_values(ti, latest)
        if not transition(session, ti.id, (ti.state,), ti.try_number, **values):
            raise Conflict(f"task {task_id!r} changed meanwhile; try again")
    if backfill_id is not None and (run.held or run.state not in ACTIVE_RUN_STATES):
        wait_again(session, run, now)
        return sorted(chosen)
    session.execute(
        update(DagRun)
        .where(DagRun.id == run.id)
        .values(state="running" if run.started_at else "queued", ended_at=None)
        .execution_options(synchronize_session=False)
    )
    session.expire(run, ["state", "ended_at"])
    schedule_ready(session, run, now)
    return sorted(chosen)


def _stale_expansions(tis: dict[str, TaskInstance], chosen: set[str]) -> dict[str, str]:
    """mapped task → the chosen upstream(s) it was expanded over: rerunning those would leave
    its instances on a list they were not made from."""
    rerun = {tis[t].task_id for t in chosen}
    stale: dict[str, str] = {}
    for ti in tis.values():
        if ti.map_index >= 0 and ti.map_spec:
            sources = sorted({e["task"] for e in ti.map_spec if "task" in e} & rerun)
            if sources:
                stale[ti.task_id] = ", ".join(sources)
    return stale


def label(ti: TaskInstance) -> str:
    """How a clear names a task instance: its task id, `load[2]` for a mapped instance."""
    return instance_label(ti.task_id, ti.map_index)


def _select(tis: dict[str, TaskInstance], request: ClearRequest) -> set[str]:
    """The labels chosen: a task id names all of a mapped task's instances, `load[2]` one."""
    by_task: dict[str, set[str]] = {}
    for name, ti in tis.items():
        by_task.setdefault(ti.task_id, set()).add(name)
    if request.task_ids:
        unknown = sorted(t for t in request.task_ids if t not in tis and t not in by_task)
        if unknown:
            raise NotFound(f"the run has no task {', '.join(map(repr, unknown))}")
        chosen = {name for t in request.task_ids for name in (by_task.get(t) or {t})}
    else:
        chosen = set(tis)
    if request.failed_only:
        chosen = {t for t in chosen if tis[t].state in FAILED}
    if request.downstream:
        below = _downstream_of(tis, {tis[t].task_id for t in chosen})
        chosen |= {name for task_id in below for name in by_task[task_id]}
    return chosen


def _downstream_of(tis: dict[str, TaskInstance], roots: set[str]) -> set[str]:
    """Task ids downstream of the task ids `roots`."""
    below: dict[str, set[str]] = {}
    for ti in tis.values():
        for up in ti.upstream or []:
            below.setdefault(up, set()).add(ti.task_id)
    found, todo = set(), list(roots)
    while todo:
        for child in below.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _latest(session: Session, run: DagRun, chosen: set[str]) -> tuple[Dag, dict[str, dict]]:
    dag = get_dag(session, run.dag_id)
    if dag.current_sha is None:
        raise Conflict(f"DAG {run.dag_id!r} has no current version to clear on")
    tasks = {t["task_id"]: t for t in (dag.structure or {}).get("tasks", [])}
    missing = sorted(chosen - set(tasks))
    if missing:
        raise Conflict(
            f"the current version {dag.current_sha[:12]} of {run.dag_id!r} has no task "
            f"{', '.join(map(repr, missing))}; clear without on_latest to rerun the run's own"
        )
    return dag, tasks


def _cleared_values(ti: TaskInstance, latest: tuple[Dag, dict[str, dict]] | None) -> dict:
    retries = ti.retries if ti.retries is not None else max(ti.max_tries - 1, 0)
    values: dict = {
        "state": "none",
        "result": None,
        "error": None,
        "queued_at": None,
        "started_at": None,
        "ended_at": None,
        "heartbeat_at": None,
        "next_try_at": None,
        "worker": None,
        "attempt": None,
        "grant_hash": None,
    }
    if latest is not None:
        dag, tasks = latest
        task = tasks[ti.task_id]
        retries = int(task.get("retries") or 0)
        values.update(trigger_rule=task.get("trigger_rule"), pool=task.get("pool"),
                      branch=bool(task.get("branch")))  # fmt: skip
        values.update(
            sha=dag.current_sha,
            fileloc=dag.fileloc,
            retries=retries,
            retry_delay=float(task.get("retry_delay") or 0.0),
            timeout=task.get("timeout"),
            queue=task.get("queue") or "default",
        )
    values["max_tries"] = ti.try_number + retries + 1
    return values
