"""Tasks, TaskFlow style: `@task` marks a function; *calling* it inside `with DAG(...)` adds a task.

Calling (not decorating) is what creates a task so that one function can be used several times
and in several DAGs, and so that passing one call's output to another wires the dependency and
the value in one gesture. The arguments are kept as written, with `TaskOutput` placeholders; a
worker re-imports the DAG file at the run's commit and `Task.call` swaps each placeholder for
the upstream task's result.

This module must stay import-cheap (stdlib only): every DAG file imports it.
"""

from __future__ import annotations

import enum
import inspect
import math
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, Protocol, overload

from dagstore.core.errors import DagDefinitionError

ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}")
CONTEXT_PARAM = "context"
OPTION_NAMES = ("retries", "retry_delay", "timeout", "queue")
MAX_RETRIES = 1000
MAX_SECONDS = 10 * 366 * 86400.0  # a retry delay or a timeout: ten years
DEFAULT_OPTIONS: dict[str, Any] = {
    "retries": 0,
    "retry_delay": 0.0,
    "timeout": None,
    "queue": "default",
}


class _Unset(enum.Enum):
    """Tells "not given" from an explicit None (`timeout=None` overrides a default timeout)."""

    UNSET = "UNSET"


UNSET = _Unset.UNSET

class DAG(Protocol):
    """What a task needs of the DAG it is added to; `dagstore.authoring.dag.DAG` is the one.

    A protocol, not an import: the DAG module builds on this one (tasks, the open-DAG stack),
    so this one must not import it back.
    """

    @property
    def dag_id(self) -> str: ...

    def add_task(
        self, function: TaskFunction, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Task: ...

    def add_dependency(self, upstream: Task, downstream: Task) -> None: ...


# The DAGs whose `with` block is open, innermost last. A ContextVar keeps threads apart.
_open_dags: ContextVar[tuple[DAG, ...]] = ContextVar("pinflow_open_dags", default=())


def current_dag() -> DAG | None:
    """The innermost DAG whose `with` block is open in this thread, if any."""
    stack = _open_dags.get()
    return stack[-1] if stack else None


def push_dag(dag: DAG) -> None:
    _open_dags.set((*_open_dags.get(), dag))


def pop_dag(dag: DAG) -> None:
    stack = _open_dags.get()
    if not stack or stack[-1] is not dag:
        raise DagDefinitionError(f"DAG {dag.dag_id!r}: `with` blocks of DAGs closed out of order")
    _open_dags.set(stack[:-1])


def valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def _seconds(name: str, value: object, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or abs(value) > MAX_SECONDS:
            raise ValueError(f"{name} must be at most {MAX_SECONDS:g} seconds, got {value!r}")
        return float(value)
    kind = "seconds, a timedelta or None" if allow_none else "seconds or a timedelta"
    raise ValueError(f"{name} must be {kind}, got {value!r}")


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise task options (durations to float seconds); ValueError says what is wrong.

    Kept separate from the DAG so that both `default_args` and `@task(...)` go through one rule.
    """
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ValueError(f"unknown task option(s) {', '.join(map(repr, unknown))}")
    out: dict[str, Any] = {}
    for name, value in options.items():
        if value is UNSET:
            continue
        if name == "retries":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"retries must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"retries must be >= 0 (negative retries), got {value}")
            if value > MAX_RETRIES:
                raise ValueError(f"retries must be at most {MAX_RETRIES}, got {value}")
            out[name] = value
        elif name == "retry_delay":
            seconds = _seconds(name, value, allow_none=False)
            if seconds is None or seconds < 0:
                raise ValueError(f"retry_delay must be >= 0, got {value!r}")
            out[name] = seconds
        elif name == "timeout":
            seconds = _seconds(name, value, allow_none=True)
            if seconds is not None and seconds <= 0:
                raise ValueError(f"timeout must be > 0 or None, got {value!r}")
            out[name] = seconds
        elif name == "queue":
            if not isinstance(value, str) or not value:
                raise ValueError(f"queue must be a non-empty string, got {value!r}")
            out[name] = value
    return out


class TaskFunction:
    """What `@task` returns: the function plus its options; calling it inside a DAG adds a task."""

    def __init__(
        self, function: Callable[..., Any], task_id: str | None, options: dict[str, Any]
    ) -> None:
        if not callable(function):
            raise TypeError(f"@task needs a function, got {function!r}")
        self.function = function
        self.task_id = task_id
        self.options = options  # only what the decorator was given; default_args fill the rest
        self.__doc__ = function.__doc__
        self.__name__ = getattr(function, "__name__", type(function).__name__)
        self.__qualname__ = getattr(function, "__qualname__", self.__name__)
        self.__module__ = getattr(function, "__module__", __name__)
        self.__wrapped__ = function
        self.signature = inspect.signature(function)
        context = self.signature.parameters.get(CONTEXT_PARAM)
        self.wants_context = context is not None
        if context is not None and context.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise DagDefinitionError(
                f"task {self.name!r}: parameter 'context' must accept a keyword argument"
            )
        # What callers bind against at definition time: everything except `context`.
        self.bind_signature = self.signature.replace(
            parameters=[p for p in self.signature.parameters.values() if p.name != CONTEXT_PARAM]
        )

    @property
    def name(self) -> str:
        """The task id this function asks for (before `__1`-style suffixes)."""
        return self.task_id or self.__name__

    def override(
        self,
        *,
        task_id: str | None = None,
        retries: int | _Unset = UNSET,
        retry_delay: float | timedelta | _Unset = UNSET,
        timeout: float | timedelta | None | _Unset = UNSET,
        queue: str | _Unset = UNSET,
    ) -> TaskFunction:
        """A copy with some options changed, for one call: `extract.override(task_id="eu")()`."""
        given = {"retries": retries, "retry_delay": retry_delay, "timeout": timeout, "queue": queue}
        options = self.options | {k: v for k, v in given.items() if v is not UNSET}
        return TaskFunction(self.function, task_id or self.task_id, options)

    def __call__(self, *args: Any, **kwargs: Any) -> TaskOutput:
        dag = current_dag()
        if dag is None:
            raise DagDefinitionError(
                f"task {self.name!r} was called outside a `with DAG(...)` block; "
                "call task functions inside the DAG they belong to"
            )
        if CONTEXT_PARAM in kwargs and self.wants_context:
            raise DagDefinitionError(
                f"DAG {dag.dag_id!r}: task {self.name!r}: do not pass 'context'; "
                "it is given at run time"
            )
        try:
            self.bind_signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise DagDefinitionError(
                f"DAG {dag.dag_id!r}: task {self.name!r} called with bad arguments: {exc}"
            ) from None
        return dag.add_task(self, args, kwargs).output

    def __repr__(self) -> str:
        return f"<task function {self.__qualname__}>"


@overload
def task(python_callable: Callable[..., Any], /) -> TaskFunction: ...


@overload
def task(
    python_callable: None = None,
    /,
    *,
    retries: int | _Unset = UNSET,
    retry_delay: float | timedelta | _Unset = UNSET,
    timeout: float | timedelta | None | _Unset = UNSET,
    queue: str | _Unset = UNSET,
    task_id: str | None = None,
) -> Callable[[Callable[..., Any]], TaskFunction]: ...


def task(
    python_callable: Callable[..., Any] | None = None,
    /,
    *,
    retries: int | _Unset = UNSET,
    retry_delay: float | timedelta | _Unset = UNSET,
    timeout: float | timedelta | None | _Unset = UNSET,
    queue: str | _Unset = UNSET,
    task_id: str | None = None,
) -> TaskFunction | Callable[[Callable[..., Any]], TaskFunction]:
    """`@task` or `@task(retries=2, retry_delay=5, timeout=600, queue="q", task_id="x")`.

    Options left out come from the DAG's `default_args`, then from DEFAULT_OPTIONS; they are
    checked when the task is added to a DAG, so the error can name that DAG.
    """
    given = {"retries": retries, "retry_delay": retry_delay, "timeout": timeout, "queue": queue}
    options = {k: v for k, v in given.items() if v is not UNSET}

    def decorate(function: Callable[..., Any]) -> TaskFunction:
        made = TaskFunction(function, task_id, options)
        try:  # fail at the decorator already; the DAG re-checks once default_args are merged
            check_options(options)
        except ValueError as exc:
            dag = current_dag()
            where = f"DAG {dag.dag_id!r}: " if dag is not None else ""
            raise DagDefinitionError(f"{where}task {made.name!r}: {exc}") from None
        return made

    return decorate(python_callable) if python_callable is not None else decorate


class MissingUpstreamResult(LookupError):
    """`Task.call` was not given the result of an upstream task whose value it needs."""


class Task:
    """One task of one DAG: what runs, with which bound arguments, after which tasks."""

    def __init__(
        self,
        dag: DAG,
        task_id: str,
        function: TaskFunction,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> None:
        self.dag = dag
        self.task_id = task_id
        self.task_function = function
        self.args = args
        self.kwargs = kwargs
        self.retries: int = options["retries"]
        self.retry_delay: float = options["retry_delay"]
        self.timeout: float | None = options["timeout"]
        self.queue: str = options["queue"]
        self.upstream_task_ids: set[str] = set()
        self.downstream_task_ids: set[str] = set()
        self.output = TaskOutput(self)

    @property
    def dag_id(self) -> str:
        return self.dag.dag_id

    @property
    def function(self) -> Callable[..., Any]:
        return self.task_function.function

    @property
    def function_name(self) -> str:
        """Qualified name without the module: DAG modules are named per commit, and the
        structure hash must not change just because the commit did."""
        return self.task_function.__qualname__

    def value_inputs(self) -> list[TaskOutput]:
        """The outputs this task's arguments refer to (they are upstream of it)."""
        found: list[TaskOutput] = []
        _walk((self.args, self.kwargs), found.append)
        return found

    def call(self, upstream_results: Mapping[str, Any], context: Mapping[str, Any]) -> Any:
        """Run the function with its bound arguments, outputs replaced by upstream results."""

        def resolve(output: TaskOutput) -> Any:
            try:
                return upstream_results[output.task_id]
            except KeyError:
                raise MissingUpstreamResult(
                    f"task {self.task_id!r} of DAG {self.dag_id!r} needs the result of "
                    f"upstream task {output.task_id!r}"
                ) from None

        args = [_substitute(a, resolve) for a in self.args]
        kwargs = {k: _substitute(v, resolve) for k, v in self.kwargs.items()}
        if self.task_function.wants_context:
            kwargs[CONTEXT_PARAM] = {"dag_id": self.dag_id, "task_id": self.task_id, **context}
        result = self.function(*args, **kwargs)
        if inspect.iscoroutine(result):
            import asyncio

            result = asyncio.run(result)
        return result

    def __repr__(self) -> str:
        return f"<Task {self.dag_id}.{self.task_id}>"


def _walk(value: Any, visit: Callable[[TaskOutput], None]) -> None:
    if isinstance(value, TaskOutput):
        visit(value)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _walk(item, visit)
    elif isinstance(value, dict):
        for key, item in value.items():
            _walk(key, visit)
            _walk(item, visit)


def _substitute(value: Any, resolve: Callable[[TaskOutput], Any]) -> Any:
    if isinstance(value, TaskOutput):
        return resolve(value)
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(_substitute(v, resolve) for v in value)
    if isinstance(value, dict):
        return {_substitute(k, resolve): _substitute(v, resolve) for k, v in value.items()}
    return value


class TaskOutput:
    """The future result of a task: pass it to another task's call, or chain with >> and <<."""

    def __init__(self, task: Task) -> None:
        self.task = task

    @property
    def task_id(self) -> str:
        return self.task.task_id

    @property
    def dag(self) -> DAG:
        return self.task.dag

    def _targets(self, other: Any, op: str) -> list[TaskOutput]:
        items = list(other) if isinstance(other, list | tuple | set) else [other]
        for item in items:
            if isinstance(item, TaskOutput):
                continue
            hint = (
                f"; call {item.name}(...) to create the task first"
                if isinstance(item, TaskFunction)
                else ""
            )
            raise DagDefinitionError(
                f"DAG {self.dag.dag_id!r}: cannot use {op} between task {self.task_id!r} "
                f"and {item!r}{hint}"
            )
        return items

    def __rshift__(self, other: Any) -> Any:
        for item in self._targets(other, ">>"):
            self.dag.add_dependency(self.task, item.task)
        return other

    def __lshift__(self, other: Any) -> Any:
        for item in self._targets(other, "<<"):
            self.dag.add_dependency(item.task, self.task)
        return other

    def __rrshift__(self, other: Any) -> TaskOutput:
        """`[a, b] >> self`."""
        for item in self._targets(other, ">>"):
            self.dag.add_dependency(item.task, self.task)
        return self

    def __rlshift__(self, other: Any) -> TaskOutput:
        """`[a, b] << self`."""
        for item in self._targets(other, "<<"):
            self.dag.add_dependency(self.task, item.task)
        return self

    def __repr__(self) -> str:
        return f"<TaskOutput of {self.task.dag_id}.{self.task_id}>"
