"""Dynamic task mapping: `load.expand(part=list_parts())`, one task instance per element.

What an author writes is checked here at definition time; how a map index picks one element
of each mapped argument is written here once, for the scheduler (which expands a task when
its upstreams are done and hands each instance its elements) and for the worker and
`pinflow dags test` (which call the task with them).

Several mapped arguments give one instance per combination, the last argument varying
fastest (`itertools.product`, as Airflow does). An argument maps over an upstream task's
result, which must be a list (a mapped upstream's result is the list of its instances'
results, so mapping over it gives one instance per upstream instance), or over a literal list
written in the DAG file (the structure keeps only its length; the worker has the list).

Stdlib only: every DAG file imports the authoring model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagstore.core.errors import DagDefinitionError

MAX_MAP_DEFAULT = 1024  # PINFLOW_MAX_MAP: instances per mapped task, per run
MAX_LITERAL = 100_000  # elements of a literal list in `expand(...)`, whatever PINFLOW_MAX_MAP says


def instance_count(lengths: Sequence[int]) -> int:
    return math.prod(lengths)


def positions(lengths: Sequence[int], map_index: int) -> list[int]:
    """Which element of each mapped argument instance `map_index` gets (row-major: the last
    argument varies fastest)."""
    out = []
    for length in reversed(lengths):
        out.append(map_index % length)
        map_index //= length
    return out[::-1]


@dataclass(frozen=True)
class MapCall:
    """What one mapped instance is called with, as the server sends it: the element of each
    argument mapped over an upstream result, and every argument's position."""

    values: Mapping[str, Any] = field(default_factory=dict)
    positions: Mapping[str, int] = field(default_factory=dict)


def check_expand(
    task_name: str,
    mapped: Mapping[str, Any],
    partial_kwargs: Mapping[str, Any],
    is_output: Callable[[Any], bool],
    outputs_in: Callable[[Any], list[Any]],
) -> dict[str, Any]:
    """The mapped arguments as the task keeps them (an upstream output, or a literal list);
    DagDefinitionError for what cannot be mapped. `partial_kwargs` are the fixed ones."""
    if not mapped:
        raise DagDefinitionError(
            f"task {task_name!r}: expand() needs at least one keyword argument to map over"
        )
    fixed = set(partial_kwargs)
    out: dict[str, Any] = {}
    for arg, value in mapped.items():
        if arg in fixed:
            raise DagDefinitionError(
                f"task {task_name!r}: argument {arg!r} is given to both partial() and expand()"
            )
        if is_output(value):
            out[arg] = value
        elif isinstance(value, list | tuple):
            if len(value) > MAX_LITERAL:
                raise DagDefinitionError(
                    f"task {task_name!r}: expand({arg}=...) maps over {len(value)} literal "
                    f"elements, more than {MAX_LITERAL}"
                )
            if any(outputs_in(item) for item in value):
                raise DagDefinitionError(
                    f"task {task_name!r}: expand({arg}=[...]) holds a task's output; map over "
                    "an upstream task's result directly (expand(arg=upstream()))"
                )
            out[arg] = list(value)
        else:
            raise DagDefinitionError(
                f"task {task_name!r}: expand({arg}=...) maps over an upstream task's result "
                f"or a list, got {type(value).__name__}"
            )
    shared = {id(v) for v in out.values() if is_output(v)} & {
        id(o) for value in partial_kwargs.values() for o in outputs_in(value)
    }
    if shared:
        raise DagDefinitionError(
            f"task {task_name!r}: one upstream result is passed to both partial() and "
            "expand(); pass it to one of them"
        )
    return out


def structure_of(mapped: Mapping[str, Any], task_id_of: Callable[[Any], str | None]) -> list:
    """The stored form: one entry per mapped argument, in the order written; `task` names the
    upstream whose result it maps over, `length` a literal list's length."""
    entries = []
    for arg, value in mapped.items():
        upstream = task_id_of(value)
        entries.append({"arg": arg, "task": upstream} if upstream else
                       {"arg": arg, "length": len(value)})  # fmt: skip
    return entries


def elements(mapped: Mapping[str, Any], call: MapCall, is_output: Callable[[Any], bool]) -> dict:
    """The keyword arguments one instance is called with: each upstream-mapped argument's
    element as the server sent it, each literal one picked here by its position."""
    out = {}
    for arg, value in mapped.items():
        if is_output(value):
            if arg not in call.values:
                raise LookupError(f"the server sent no element for mapped argument {arg!r}")
            out[arg] = call.values[arg]
        else:
            position = call.positions.get(arg)
            if position is None or not 0 <= position < len(value):
                raise LookupError(
                    f"mapped argument {arg!r} has {len(value)} elements at this commit; "
                    f"this instance wants element {position}"
                )
            out[arg] = value[position]
    return out


# --- a run's side, the same for the scheduler, the server and `pinflow dags test` ---


def max_map() -> int:
    """PINFLOW_MAX_MAP: instances one mapped task may have in a run."""
    raw = os.environ.get("PINFLOW_MAX_MAP", "")
    try:
        value = int(raw) if raw.strip() else MAX_MAP_DEFAULT
    except ValueError:
        return MAX_MAP_DEFAULT
    return max(value, 1)


def collapse(rows: Iterable[tuple[str, int, Any]]) -> dict[str, Any]:
    """task_id → result, a mapped task's as the list of its instances' results in order."""
    single: dict[str, Any] = {}
    mapped: dict[str, list[tuple[int, Any]]] = {}
    for task_id, map_index, result in rows:
        if map_index is not None and map_index >= 0:
            mapped.setdefault(task_id, []).append((map_index, result))
        else:
            single[task_id] = result
    for task_id, items in mapped.items():
        single[task_id] = [result for _, result in sorted(items, key=lambda item: item[0])]
    return single


def lengths_of(spec: list[dict[str, Any]], results: dict[str, Any]) -> list[int] | str:
    """How many elements each mapped argument has, or why it cannot be mapped over."""
    lengths = []
    for entry in spec:
        if "task" not in entry:
            lengths.append(int(entry.get("length") or 0))
            continue
        value = results.get(entry["task"])
        if not isinstance(value, list):
            return (
                f"cannot map {entry['arg']!r} over the result of {entry['task']!r}: it returned "
                f"{type(value).__name__}, not a list"
            )
        lengths.append(len(value))
    return lengths


def map_call(
    spec: list[dict[str, Any]] | None, map_index: int, results: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, int]]:
    """What instance `map_index` is called with: the element of each argument mapped over
    an upstream result, and every argument's position (`dagstore.authoring.mapping.MapCall`).
    Nothing when what it maps over no longer has that element (an upstream rerun after a
    clear returned less): the worker then fails the try, saying so."""
    if not spec or map_index < 0:
        return {}, {}
    lengths = lengths_of(spec, results)
    if isinstance(lengths, str) or map_index >= instance_count(lengths):
        return {}, {}
    where = positions(lengths, map_index)
    values = {
        entry["arg"]: results[entry["task"]][position]
        for entry, position in zip(spec, where, strict=True)
        if "task" in entry
    }
    return values, {entry["arg"]: p for entry, p in zip(spec, where, strict=True)}


def instance_label(task_id: str, map_index: int | None) -> str:
    """How people name a task instance: `load`, or `load[2]` for a mapped instance (task ids
    cannot hold `[`, so the name is never ambiguous). Clear, the CLI and the UI take it."""
    return task_id if map_index is None or map_index < 0 else f"{task_id}[{map_index}]"


def split_label(label: str) -> tuple[str, int]:
    """`load[2]` → ("load", 2); `load` → ("load", -1)."""
    task_id, bracket, rest = label.partition("[")
    if bracket and rest.endswith("]") and rest[:-1].isdigit():
        return task_id, int(rest[:-1])
    return label, -1
