"""Tasks, TaskFlow style: `@task` marks a function; *calling* it inside `with DAG(...)` adds a task.

Calling (not decorating) is what creates a task so that one function can be used several times
and in several DAGs, and so that passing one call's output to another wires the dependency and
the value in one gesture. The arguments are kept as written, with `TaskOutput` placeholders; a
worker re-imports the DAG file at the run's commit and `Task.call` swaps each placeholder for
the upstream task's result. `fn.expand(arg=upstream())` (after `fn.partial(...)` for fixed
arguments) adds a mapped task instead (`dagstore.authoring.mapping`); `@task.branch` a task
whose result picks the downstream tasks to follow (`dagstore.authoring.branching`).

This module must stay import-cheap (stdlib only): every DAG file imports it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, Protocol, overload

from dagstore.authoring.mapping import MapCall, check_expand, elements
from dagstore.authoring.options import UNSET, _Unset, callable_name, check_options
from dagstore.authoring.outputs import TaskOutput, outputs_in, substitute
from dagstore.core.errors import DagDefinitionError

__all__ = ["MissingUpstreamResult", "Task", "TaskFunction", "TaskOutput", "task"]

CONTEXT_PARAM = "context"


class DAG(Protocol):
    """What a task needs of the DAG it is added to; `dagstore.authoring.dag.DAG` is the one.

    A protocol, not an import: the DAG module builds on this one (tasks, the open-DAG stack),
    so this one must not import it back.
    """

    @property
    def dag_id(self) -> str: ...

    def add_task(
        self,
        function: TaskFunction,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        mapped: dict[str, Any] | None = None,
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


class TaskFunction:
    """What `@task` returns: the function plus its options; calling it inside a DAG adds a task."""

    def __init__(
        self,
        function: Callable[..., Any],
        task_id: str | None,
        options: dict[str, Any],
        branch: bool = False,
    ) -> None:
        if not callable(function):
            raise TypeError(f"@task needs a function, got {function!r}")
        self.function = function
        self.task_id = task_id
        self.options = options  # only what the decorator was given; default_args fill the rest
        self.branch = branch
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

    def override(self, *, task_id: str | None = None, **options: Any) -> TaskFunction:
        """A copy with some options changed, for one call: `extract.override(task_id="eu")()`.
        Takes the options `@task` takes."""
        try:
            check_options(options)
        except ValueError as exc:
            raise DagDefinitionError(f"task {self.name!r}: override: {exc}") from None
        given = {k: v for k, v in options.items() if v is not UNSET}
        return TaskFunction(self.function, task_id or self.task_id, self.options | given,
                            self.branch)  # fmt: skip

    def _dag(self, action: str) -> DAG:
        dag = current_dag()
        if dag is None:
            raise DagDefinitionError(
                f"task {self.name!r} was {action} outside a `with DAG(...)` block; "
                "call task functions inside the DAG they belong to"
            )
        return dag

    def _bind(self, dag: DAG, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
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

    def __call__(self, *args: Any, **kwargs: Any) -> TaskOutput:
        dag = self._dag("called")
        self._bind(dag, args, kwargs)
        return dag.add_task(self, args, kwargs).output

    def partial(self, *args: Any, **kwargs: Any) -> PartialCall:
        """The arguments every mapped instance shares: `load.partial(db=x).expand(part=p)`."""
        return PartialCall(self, args, kwargs)

    def expand(self, **mapped: Any) -> TaskOutput:
        """One task instance per element: `load.expand(part=list_parts())`."""
        return PartialCall(self, (), {}).expand(**mapped)

    def __repr__(self) -> str:
        return f"<task function {self.__qualname__}>"


class PartialCall:
    """`fn.partial(...)`: fixed arguments, waiting for `.expand(...)` to add the mapped task."""

    def __init__(self, function: TaskFunction, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.function = function
        self.args = args
        self.kwargs = kwargs

    def expand(self, **mapped: Any) -> TaskOutput:
        function = self.function
        dag = function._dag("mapped")
        if function.branch:
            raise DagDefinitionError(
                f"DAG {dag.dag_id!r}: task {function.name!r}: a @task.branch task cannot be mapped"
            )
        try:
            kept = check_expand(function.name, mapped, self.kwargs,
                                lambda v: isinstance(v, TaskOutput), outputs_in)  # fmt: skip
        except DagDefinitionError as exc:
            raise DagDefinitionError(f"DAG {dag.dag_id!r}: {exc.detail}") from None
        function._bind(dag, self.args, {**self.kwargs, **dict.fromkeys(kept)})
        return dag.add_task(function, self.args, dict(self.kwargs), kept).output


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
    pool: str | None | _Unset = UNSET,
    trigger_rule: str | _Unset = UNSET,
    on_failure: Callable[[dict[str, Any]], Any] | None | _Unset = UNSET,
    task_id: str | None = None,
) -> Callable[[Callable[..., Any]], TaskFunction]: ...


def task(
    python_callable: Callable[..., Any] | None = None,
    /,
    *,
    task_id: str | None = None,
    **options: Any,
) -> TaskFunction | Callable[[Callable[..., Any]], TaskFunction]:
    """`@task` or `@task(retries=2, retry_delay=5, timeout=600, queue="q", pool="warehouse",
    trigger_rule="all_done", on_failure=alert, task_id="x")`.

    Options left out come from the DAG's `default_args`, then from DEFAULT_OPTIONS; they are
    checked when the task is added to a DAG, so the error can name that DAG.
    """
    return _decorator(python_callable, task_id, options, branch=False)


def branch(
    python_callable: Callable[..., Any] | None = None,
    /,
    *,
    task_id: str | None = None,
    **options: Any,
) -> TaskFunction | Callable[[Callable[..., Any]], TaskFunction]:
    """`@task.branch`: the function returns the id(s) of the direct downstream task(s) to
    follow; the other direct downstreams are skipped. Takes the options `@task` takes."""
    return _decorator(python_callable, task_id, options, branch=True)


task.branch = branch  # type: ignore[attr-defined]


def _decorator(
    python_callable: Callable[..., Any] | None,
    task_id: str | None,
    options: dict[str, Any],
    branch: bool,
) -> TaskFunction | Callable[[Callable[..., Any]], TaskFunction]:
    given = {k: v for k, v in options.items() if v is not UNSET}

    def decorate(function: Callable[..., Any]) -> TaskFunction:
        made = TaskFunction(function, task_id, given, branch)
        try:  # fail at the decorator already; the DAG re-checks once default_args are merged
            check_options(given)
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
        mapped: dict[str, Any] | None = None,
    ) -> None:
        self.dag = dag
        self.task_id = task_id
        self.task_function = function
        self.args = args
        self.kwargs = kwargs
        self.mapped = mapped  # argument → upstream output or literal list; None: not mapped
        self.retries: int = options["retries"]
        self.retry_delay: float = options["retry_delay"]
        self.timeout: float | None = options["timeout"]
        self.queue: str = options["queue"]
        self.pool: str | None = options["pool"]
        self.trigger_rule: str = options["trigger_rule"]
        self.on_failure: Callable[[dict[str, Any]], Any] | None = options["on_failure"]
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
    def is_branch(self) -> bool:
        return self.task_function.branch

    @property
    def function_name(self) -> str:
        return callable_name(self.task_function)

    def value_inputs(self) -> list[TaskOutput]:
        """The outputs this task's arguments refer to (they are upstream of it)."""
        return outputs_in((self.args, self.kwargs, list((self.mapped or {}).values())))

    def call(
        self,
        upstream_results: Mapping[str, Any],
        context: Mapping[str, Any],
        map_call: MapCall | None = None,
    ) -> Any:
        """Run the function with its bound arguments, outputs replaced by upstream results
        (and, for a mapped instance, each mapped argument by its element)."""

        def resolve(output: TaskOutput) -> Any:
            try:
                return upstream_results[output.task_id]
            except KeyError:
                raise MissingUpstreamResult(
                    f"task {self.task_id!r} of DAG {self.dag_id!r} needs the result of "
                    f"upstream task {output.task_id!r}"
                ) from None

        args = [substitute(a, resolve) for a in self.args]
        kwargs = {k: substitute(v, resolve) for k, v in self.kwargs.items()}
        if self.mapped is not None:
            kwargs |= elements(
                self.mapped, map_call or MapCall(), lambda v: isinstance(v, TaskOutput)
            )
        if self.task_function.wants_context:
            kwargs[CONTEXT_PARAM] = {"dag_id": self.dag_id, "task_id": self.task_id, **context}
        result = self.function(*args, **kwargs)
        if inspect.iscoroutine(result):
            import asyncio

            result = asyncio.run(result)
        return result

    def __repr__(self) -> str:
        return f"<Task {self.dag_id}.{self.task_id}>"
