"""The DAG: a named set of tasks with dependencies and a schedule, defined in a `with` block.

Everything an author can get wrong is checked while the DAG file is imported, so a bad push is
reported as that file's import error instead of surfacing later in a scheduler or a worker.
Checks that need the whole graph (cycles) run when the `with` block exits; only then is the DAG
handed to whoever is `collecting()` (the parser and the worker), so they never see half a DAG.

This module must stay import-cheap (stdlib + dagstore.errors/task/schedule; croniter is loaded
only for cron schedules): every DAG file imports it through `pinflow`.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import Any

from dagstore.authoring.branching import literal_returns
from dagstore.authoring.mapping import structure_of
from dagstore.authoring.options import (
    DEFAULT_OPTIONS,
    ID_RULE,
    callable_name,
    check_options,
    seconds,
    valid_id,
)
from dagstore.authoring.rules import DEFAULT_RULE
from dagstore.authoring.schedule import Schedule, as_utc, parse_schedule
from dagstore.authoring.task import Task, TaskFunction, TaskOutput, pop_dag, push_dag
from dagstore.authoring.wallclock import UTC_NAME, check_timezone
from dagstore.core.errors import DagDefinitionError

__all__ = ["DAG", "TaskOutput", "collecting"]

MAX_ACTIVE_RUNS = 10_000  # bounds stored numbers the database keeps in integer columns
MAX_ACTIVE_TASKS = 100_000

# Lists being filled by `collecting()` blocks that are open in this thread.
_collectors: ContextVar[tuple[list[DAG], ...]] = ContextVar("pinflow_collectors", default=())


@contextmanager
def collecting() -> Iterator[list[DAG]]:
    """Gather every DAG whose `with` block completes inside this block (e.g. one module import).

    A registry rather than scanning module globals: DAGs made in loops or functions count too,
    and a DAG whose definition failed never appears.
    """
    found: list[DAG] = []
    token = _collectors.set((*_collectors.get(), found))
    try:
        yield found
    finally:
        _collectors.reset(token)


def _register(dag: DAG) -> None:
    collectors = _collectors.get()
    if any(other.dag_id == dag.dag_id for found in collectors for other in found):
        raise DagDefinitionError(f"DAG {dag.dag_id!r} is defined more than once")
    for found in collectors:
        found.append(dag)


def structure_hash(structure: Mapping[str, Any]) -> str:
    """Lets the store tell versions where the DAG really changed from mere new commits (the
    store computes it again from what it keeps: `dagstore.parsing.results`)."""
    canonical = json.dumps(structure, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _utc(dag_id: str, name: str, value: object) -> datetime | None:
    """datetime, date or ISO string → aware UTC datetime; naive means UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        try:
            return as_utc(datetime.fromisoformat(value.strip()))
        except ValueError:
            raise DagDefinitionError(
                f"DAG {dag_id!r}: {name} {value!r} is not an ISO date or datetime"
            ) from None
    raise DagDefinitionError(
        f"DAG {dag_id!r}: {name} must be a datetime, a date or an ISO string, got {value!r}"
    )


class DAG:
    """`with DAG("etl", schedule="@daily", start_date="2026-01-01"): ...`"""

    def __init__(
        self,
        dag_id: str,
        schedule: str | timedelta | None = None,
        start_date: datetime | date | str | None = None,
        end_date: datetime | date | str | None = None,
        catchup: bool = False,
        max_active_runs: int = 16,
        tags: Iterable[str] = (),
        description: str = "",
        default_args: Mapping[str, Any] | None = None,
        timezone: str = UTC_NAME,
        on_failure: Any = None,
        dagrun_timeout: float | timedelta | None = None,
        max_active_tasks: int | None = None,
    ) -> None:
        if not valid_id(dag_id):
            raise DagDefinitionError(f"DAG {dag_id!r}: invalid dag_id ({ID_RULE})")
        self.dag_id: str = dag_id
        self.start_date = _utc(dag_id, "start_date", start_date)
        self.end_date = _utc(dag_id, "end_date", end_date)
        try:
            self.timezone = check_timezone(timezone)
            self.schedule: Schedule = parse_schedule(
                schedule, anchor=self.start_date, timezone=self.timezone
            )
        except DagDefinitionError as exc:
            raise DagDefinitionError(f"DAG {dag_id!r}: {exc.detail}") from None
        self._limits(on_failure, dagrun_timeout, max_active_tasks)
        if not self.schedule.is_manual and self.start_date is None:
            raise DagDefinitionError(
                f"DAG {dag_id!r}: start_date is required for a scheduled DAG "
                f"(schedule {self.schedule.to_json()!r})"
            )
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise DagDefinitionError(
                f"DAG {dag_id!r}: end_date {self.end_date.isoformat()} is before "
                f"start_date {self.start_date.isoformat()}"
            )
        if not isinstance(catchup, bool):
            raise DagDefinitionError(f"DAG {dag_id!r}: catchup must be True or False")
        self.catchup = catchup
        if not isinstance(max_active_runs, int) or isinstance(max_active_runs, bool):
            raise DagDefinitionError(f"DAG {dag_id!r}: max_active_runs must be an int")
        if max_active_runs < 1:
            raise DagDefinitionError(
                f"DAG {dag_id!r}: max_active_runs must be >= 1, got {max_active_runs}"
            )
        if max_active_runs > MAX_ACTIVE_RUNS:
            raise DagDefinitionError(
                f"DAG {dag_id!r}: max_active_runs must be at most {MAX_ACTIVE_RUNS}, "
                f"got {max_active_runs}"
            )
        self.max_active_runs = max_active_runs
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            raise DagDefinitionError(f"DAG {dag_id!r}: tags must be a list of strings")
        self.tags: list[str] = sorted(set(tags))
        if not isinstance(description, str):
            raise DagDefinitionError(f"DAG {dag_id!r}: description must be a string")
        self.description = description
        try:
            self.default_args = check_options(dict(default_args or {}))
        except ValueError as exc:
            raise DagDefinitionError(f"DAG {dag_id!r}: default_args: {exc}") from None
        self.tasks: dict[str, Task] = {}  # in the order they were added
        self.fileloc: str | None = None  # set by the loader: the DAG file, relative to the repo
        self._state = "new"  # new → open (inside `with`) → closed

    def _limits(self, on_failure: Any, dagrun_timeout: Any, max_active_tasks: Any) -> None:
        """on_failure, dagrun_timeout and max_active_tasks, checked."""
        if on_failure is not None and not callable(on_failure):
            raise DagDefinitionError(
                f"DAG {self.dag_id!r}: on_failure must be a function taking the context, "
                f"got {on_failure!r}"
            )
        self.on_failure = on_failure
        try:
            self.dagrun_timeout = seconds("dagrun_timeout", dagrun_timeout, allow_none=True)
        except ValueError as exc:
            raise DagDefinitionError(f"DAG {self.dag_id!r}: {exc}") from None
        if self.dagrun_timeout is not None and self.dagrun_timeout <= 0:
            raise DagDefinitionError(f"DAG {self.dag_id!r}: dagrun_timeout must be > 0")
        if max_active_tasks is not None and (
            not isinstance(max_active_tasks, int)
            or isinstance(max_active_tasks, bool)
            or not 1 <= max_active_tasks <= MAX_ACTIVE_TASKS
        ):
            raise DagDefinitionError(
                f"DAG {self.dag_id!r}: max_active_tasks must be an int from 1 to "
                f"{MAX_ACTIVE_TASKS} or None, got {max_active_tasks!r}"
            )
        self.max_active_tasks: int | None = max_active_tasks

    # --- the `with` block -------------------------------------------------------------------

    def __enter__(self) -> DAG:
        if self._state != "new":
            raise DagDefinitionError(
                f"DAG {self.dag_id!r}: a DAG's `with` block can be entered only once"
            )
        push_dag(self)
        self._state = "open"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pop_dag(self)
        self._state = "closed"
        if exc_type is None:
            self.check_acyclic()
            self.check_branches()
            _register(self)

    # --- building (called by task calls and >>) -------------------------------------------------

    def _require_open(self, action: str) -> None:
        if self._state != "open":
            raise DagDefinitionError(
                f"DAG {self.dag_id!r}: cannot {action} outside its `with` block"
            )

    def add_task(
        self,
        function: TaskFunction,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        mapped: dict[str, Any] | None = None,
    ) -> Task:
        """Add one call of `function`; its TaskOutput arguments become its upstream tasks.
        `mapped`: the arguments of `expand(...)`, one instance per element."""
        self._require_open("add tasks")
        task_id = self._new_task_id(function)
        try:
            options = DEFAULT_OPTIONS | self.default_args | check_options(function.options)
        except ValueError as exc:
            raise DagDefinitionError(f"DAG {self.dag_id!r}: task {task_id!r}: {exc}") from None
        new = Task(self, task_id, function, args, dict(kwargs), options, mapped)
        inputs = new.value_inputs()
        for output in inputs:  # check all before changing anything
            self._check_same_dag(output.task, new)
        self.tasks[task_id] = new
        for output in inputs:
            self.add_dependency(output.task, new)
        return new

    def _new_task_id(self, function: TaskFunction) -> str:
        """Airflow-style: calling the same function again gives `name__1`, `name__2`, ...; an id
        taken by a different function, or an explicit task_id that is taken, is an error."""
        base = function.name
        if not valid_id(base):
            raise DagDefinitionError(f"DAG {self.dag_id!r}: invalid task_id {base!r} ({ID_RULE})")
        taken = self.tasks.get(base)
        if taken is None:
            return base
        same_function = (
            function.task_id is None
            and taken.task_function.task_id is None
            and taken.task_function.__qualname__ == function.__qualname__
        )
        if not same_function:
            raise DagDefinitionError(
                f"DAG {self.dag_id!r}: duplicate task_id {base!r} "
                f"(already used by {taken.function_name})"
            )
        n = 1
        while f"{base}__{n}" in self.tasks:
            n += 1
        task_id = f"{base}__{n}"
        if not valid_id(task_id):
            raise DagDefinitionError(f"DAG {self.dag_id!r}: invalid task_id {task_id!r}")
        return task_id

    def _check_same_dag(self, upstream: Task, downstream: Task) -> None:
        if upstream.dag is not downstream.dag:
            raise DagDefinitionError(
                f"DAG {downstream.dag_id!r}: task {downstream.task_id!r} cannot depend on "
                f"task {upstream.task_id!r} of another DAG ({upstream.dag_id!r})"
            )

    def add_dependency(self, upstream: Task, downstream: Task) -> None:
        """`upstream` must succeed before `downstream` runs. Cycles are checked at block exit."""
        self._check_same_dag(upstream, downstream)
        self._require_open("add dependencies")
        upstream.downstream_task_ids.add(downstream.task_id)
        downstream.upstream_task_ids.add(upstream.task_id)

    # --- checking and reading ---------------------------------------------------------------

    def check_acyclic(self) -> None:
        cycle = self.find_cycle()
        if cycle:
            raise DagDefinitionError(f"DAG {self.dag_id!r}: dependency cycle: {' -> '.join(cycle)}")

    def check_branches(self) -> None:
        """A branch task's literal returns (`return "publish"`) must name direct downstreams:
        a typo fails the push, not a run at 2 a.m."""
        for t in self.tasks.values():
            if not t.is_branch:
                continue
            if not t.downstream_task_ids:
                raise DagDefinitionError(
                    f"DAG {self.dag_id!r}: @task.branch {t.task_id!r} has no downstream task"
                )
            for chosen in literal_returns(t.function):
                if chosen not in t.downstream_task_ids:
                    below = ", ".join(sorted(t.downstream_task_ids)) or "none"
                    raise DagDefinitionError(
                        f"DAG {self.dag_id!r}: @task.branch {t.task_id!r} returns {chosen!r}, "
                        f"which is not one of its direct downstream tasks ({below})"
                    )

    def find_cycle(self) -> list[str] | None:
        """One cycle as task ids, first repeated at the end (`a -> b -> a`), or None."""
        done: set[str] = set()
        for root in sorted(self.tasks):
            if root in done:
                continue
            path: list[str] = [root]
            on_path = {root}
            stack = [iter(sorted(self.tasks[root].downstream_task_ids))]
            while stack:
                child = next(stack[-1], None)
                if child is None:
                    stack.pop()
                    done.add(path[-1])
                    on_path.discard(path.pop())
                elif child in on_path:
                    return path[path.index(child) :] + [child]
                elif child not in done:
                    path.append(child)
                    on_path.add(child)
                    stack.append(iter(sorted(self.tasks[child].downstream_task_ids)))
        return None

    def topological_order(self) -> list[Task]:
        """Upstream before downstream; ties broken by task_id so the order is stable."""
        waiting = {tid: len(t.upstream_task_ids) for tid, t in self.tasks.items()}
        ready = [tid for tid, n in waiting.items() if n == 0]
        heapq.heapify(ready)
        order: list[Task] = []
        while ready:
            current = self.tasks[heapq.heappop(ready)]
            order.append(current)
            for child in current.downstream_task_ids:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, child)
        if len(order) != len(self.tasks):
            self.check_acyclic()
        return order

    def get_task(self, task_id: str) -> Task:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise KeyError(f"DAG {self.dag_id!r} has no task {task_id!r}") from None

    @property
    def task_ids(self) -> list[str]:
        return list(self.tasks)

    def to_structure(self) -> dict[str, Any]:
        """What the store records per version and the scheduler runs from; JSON, stable order."""
        return {
            "dag_id": self.dag_id,
            "schedule": self.schedule.to_json(),
            "start_date": self.start_date.isoformat() if self.start_date else None,
            "end_date": self.end_date.isoformat() if self.end_date else None,
            "catchup": self.catchup,
            "max_active_runs": self.max_active_runs,
            "tags": list(self.tags),
            "description": self.description,
            "tasks": [_task_structure(t) for t in self.topological_order()],
        } | _set(
            timezone=(self.timezone, UTC_NAME),
            on_failure=(_name(self.on_failure), None),
            dagrun_timeout=(self.dagrun_timeout, None),
            max_active_tasks=(self.max_active_tasks, None),
        )

    def structure_hash(self) -> str:
        return structure_hash(self.to_structure())

    def on_failure_for(self, task: Task) -> Any:
        """The failure callback of `task`: its own, else the DAG's."""
        return task.on_failure or self.on_failure

    def __repr__(self) -> str:
        return f"<DAG {self.dag_id} ({len(self.tasks)} tasks)>"


def _name(function: Any) -> str | None:
    return None if function is None else callable_name(function)


def _set(**fields: tuple[Any, Any]) -> dict[str, Any]:
    """The fields whose value is not their default: a DAG that uses none of the newer
    options keeps the structure (and the hash) it had before they existed."""
    return {key: value for key, (value, default) in fields.items() if value != default}


def _task_structure(t: Task) -> dict[str, Any]:
    return {
        "task_id": t.task_id,
        "upstream": sorted(t.upstream_task_ids),
        "retries": t.retries,
        "retry_delay": t.retry_delay,
        "timeout": t.timeout,
        "queue": t.queue,
        "function": t.function_name,
    } | _set(
        pool=(t.pool, None),
        trigger_rule=(t.trigger_rule, DEFAULT_RULE),
        branch=(t.is_branch, False),
        on_failure=(_name(t.on_failure), None),
        mapped=(
            None if t.mapped is None else structure_of(t.mapped, _output_task_id),
            None,
        ),
    )


def _output_task_id(value: Any) -> str | None:
    return value.task_id if isinstance(value, TaskOutput) else None
