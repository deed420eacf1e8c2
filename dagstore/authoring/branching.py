"""`@task.branch`: a task whose result names the direct downstream task(s) to follow.

Airflow's semantics, written once for the DAG (checks at import), the worker (checks a
branch's result), the scheduler and `pinflow dags test` (which tasks a branch skips):
- the result is a task id, a list of them, or None (follow none); each must be a direct
  downstream of the branch;
- the branch's other direct downstreams are skipped, except those that a followed task leads
  to (a "join" after the branch runs when its followed side does), and skipping spreads from
  there by trigger rules;
- returns that are plain string constants in the function's source are checked when the DAG
  file is imported, so a typo fails the push instead of a run.

Stdlib only: every DAG file imports the authoring model (`ast` only for branch tasks).
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def chosen_ids(result: Any) -> list[str] | None:
    """A branch's result as task ids, or None when it is not a branch's result."""
    if result is None:
        return []
    if isinstance(result, str):
        return [result]
    if isinstance(result, list | tuple) and all(isinstance(item, str) for item in result):
        return list(result)
    return None


def result_error(task_id: str, downstream: Iterable[str], result: Any) -> str | None:
    """Why a branch's result cannot be followed, or None when it can."""
    below = sorted(downstream)
    ids = chosen_ids(result)
    if ids is None:
        return (
            f"@task.branch {task_id!r} must return a task id, a list of task ids or None, "
            f"got {type(result).__name__}: {result!r}"[:2000]
        )
    unknown = [i for i in ids if i not in below]
    if unknown:
        return (
            f"@task.branch {task_id!r} returned {unknown[0]!r}, which is not one of its direct "
            f"downstream tasks ({', '.join(below) or 'none'})"
        )
    return None


def skipped_by(downstream_of: Mapping[str, Iterable[str]], branch_id: str, result: Any) -> set[str]:
    """The tasks a branch's result skips: its direct downstreams that no followed task leads
    to. `downstream_of` maps each task to its direct downstream tasks."""
    direct = set(downstream_of.get(branch_id, ()))
    followed = set(chosen_ids(result) or []) & direct
    reached, todo = set(followed), list(followed)
    while todo:
        for child in downstream_of.get(todo.pop(), ()):
            if child not in reached:
                reached.add(child)
                todo.append(child)
    return direct - reached


def literal_returns(function: Callable[..., Any]) -> list[str]:
    """The task ids a function returns as string constants (`return "a"`, `return ["a",
    "b"]`), read from its source; [] when the source is not available."""
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return []
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    body = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)), None
    )
    if body is None:
        return []
    found: list[str] = []
    todo: list[ast.AST] = list(body.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue  # a nested function's returns are not the branch's
        if isinstance(node, ast.Return) and node.value is not None:
            found += _constants(node.value)
        todo.extend(ast.iter_child_nodes(node))
    return found


def _constants(value: Any) -> list[str]:
    import ast

    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return [value.value]
    if isinstance(value, ast.List | ast.Tuple | ast.Set):
        items = value.elts
        if all(isinstance(i, ast.Constant) and isinstance(i.value, str) for i in items):
            return [i.value for i in items]  # type: ignore[attr-defined]
    return []
