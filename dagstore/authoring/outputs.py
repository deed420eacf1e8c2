"""Task outputs: the future result of a task, as DAG code passes it around.

Passing an output to another task's call wires the dependency and the value in one gesture;
`>>` and `<<` wire order only. The arguments of a call are kept as written, outputs and all,
and `substitute` swaps each output for the upstream task's result when the task runs.

Stdlib only: every DAG file imports the authoring model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dagstore.core.errors import DagDefinitionError

if TYPE_CHECKING:
    from dagstore.authoring.task import DAG, Task


def walk(value: Any, visit: Callable[[TaskOutput], None]) -> None:
    """Every output inside `value` (nested in lists, tuples, sets and dicts)."""
    if isinstance(value, TaskOutput):
        visit(value)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            walk(item, visit)
    elif isinstance(value, dict):
        for key, item in value.items():
            walk(key, visit)
            walk(item, visit)


def outputs_in(value: Any) -> list[TaskOutput]:
    found: list[TaskOutput] = []
    walk(value, found.append)
    return found


def substitute(value: Any, resolve: Callable[[TaskOutput], Any]) -> Any:
    """`value` with every output replaced by `resolve(output)`."""
    if isinstance(value, TaskOutput):
        return resolve(value)
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(substitute(v, resolve) for v in value)
    if isinstance(value, dict):
        return {substitute(k, resolve): substitute(v, resolve) for k, v in value.items()}
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
            name = getattr(item, "name", None) if hasattr(item, "bind_signature") else None
            hint = f"; call {name}(...) to create the task first" if name else ""
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
