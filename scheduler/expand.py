"""Mapped tasks in a run: expanding one into instances, and the results they pass on.

A mapped task (`load.expand(part=parts())`) starts as one task instance with map_index -1.
When its trigger rule lets it run, `expand` reads what it maps over (an upstream's result,
which must be a list, or a literal list's length from the structure) and turns it into n
instances, map_index 0..n-1, all `scheduled`: the placeholder becomes instance 0 and the
others are inserted beside it with its settings. An empty list skips the task; more than
PINFLOW_MAX_MAP elements fail it with a clear error. A downstream that takes a mapped task's
result gets the list of its instances' results in map_index order (`collapse`), and an
instance's claim gets its own elements (`map_call`). Both the scheduler's expansion and the
worker's call pick elements by `dagstore.authoring.mapping`, written once.

The caller holds the run's lock (`scheduler.locks`): expansion changes rows of that run only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session

from dagstore.authoring.mapping import collapse, instance_count, lengths_of, max_map
from scheduler.callbacks import fail_unclaimed
from scheduler.models import TaskInstance
from scheduler.transition import transition

# The columns an instance copies from its placeholder (state, map_index and times are its own).
_COPIED = ("run_pk", "task_id", "upstream", "try_number", "max_tries", "retry_delay", "timeout",
           "queue", "sha", "fileloc", "retries", "trigger_rule", "pool", "branch",
           "map_spec")  # fmt: skip
_RESULTS = select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.result).where(
    TaskInstance.run_pk == bindparam("run_pk"),
    TaskInstance.task_id.in_(bindparam("task_ids", expanding=True)),
)


def results_of(session: Session, run_pk: int, task_ids: list[str]) -> dict[str, Any]:
    """task_id → result of these tasks of the run (mapped ones as lists)."""
    if not task_ids:
        return {}
    return collapse(session.execute(_RESULTS, {"run_pk": run_pk, "task_ids": task_ids}).all())


def expand(
    session: Session, ti_id: int, spec: list[dict[str, Any]], now: datetime
) -> tuple[str, dict[int, str]]:
    """Expand the placeholder `ti_id` (in `none`, its run locked): returns the placeholder's
    new state and map_index → state of the instances made."""
    ti = session.get_one(TaskInstance, ti_id, populate_existing=True)
    results = results_of(session, ti.run_pk, sorted({e["task"] for e in spec if "task" in e}))
    lengths = lengths_of(spec, results)
    if isinstance(lengths, str):
        return _fail(session, ti, now, lengths)
    count, limit = instance_count(lengths), max_map()
    if count > limit:
        return _fail(session, ti, now,
                     f"expand: {count} mapped instances, more than PINFLOW_MAX_MAP ({limit}); "
                     "map over fewer elements or raise PINFLOW_MAX_MAP")  # fmt: skip
    if count == 0:
        return _end(session, ti_id, "skipped", now, None)
    if not transition(session, ti_id, ("none",), state="scheduled", map_index=0):
        return "none", {}
    if count > 1:
        base = {column: getattr(ti, column) for column in _COPIED}
        session.execute(
            insert(TaskInstance),
            [base | {"state": "scheduled", "map_index": i} for i in range(1, count)],
        )
    return "scheduled", dict.fromkeys(range(count), "scheduled")


def _end(
    session: Session, ti_id: int, state: str, now: datetime, error: str | None, **values: Any
) -> tuple[str, dict[int, str]]:
    if transition(session, ti_id, ("none",), state=state, ended_at=now, error=error, **values):
        return state, {-1: state}
    return "none", {}


def _fail(
    session: Session, ti: TaskInstance, now: datetime, error: str
) -> tuple[str, dict[int, str]]:
    """The task fails with no worker involved: a try on record (its log says why) and its
    on_failure callback owed (`scheduler.callbacks`)."""
    try_number = ti.try_number + 1
    state, made = _end(session, ti.id, "failed", now, error, try_number=try_number)
    if state == "failed":
        fail_unclaimed(session, ti.id, try_number, error, now)
    return state, made
