"""How long each task took in the DAG's recent runs: a small bar chart per task on the DAG
page, one bar per run in the grid's order, a slow one standing out (`gantt.is_slow`)."""

from __future__ import annotations

import statistics
from typing import Any

from pinflow.ui.clock import duration_text
from pinflow.ui.gantt import slower_than, usual_of
from pinflow.ui.states import group_state

BAR_W, GAP, HEIGHT = 7, 2, 26


def task_durations(task_ids: list[str], columns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task: its bars (one per grid column, in the columns' order; a run whose instance
    has not ended draws none), the median and the latest duration."""
    seconds: dict[str, list[tuple[int, float, str]]] = {t: [] for t in task_ids}
    for i, column in enumerate(columns):
        took: dict[str, list[tuple[float, str]]] = {}
        for task_id, _, state, _, secs in column["instances"]:
            if secs is not None and task_id in seconds:
                took.setdefault(task_id, []).append((secs, state))
        for task_id, parts in took.items():  # a mapped task: its instances' longest
            seconds[task_id].append(
                (i, max(s for s, _ in parts), group_state([st for _, st in parts]))
            )
    out = []
    for task_id in task_ids:
        samples = seconds[task_id]
        values = [s for _, s, _ in samples]
        top = max(values, default=0.0) or 1.0
        median = usual_of(values)
        bars = [
            {
                "x": i * (BAR_W + GAP),
                "h": max(2.0, s / top * HEIGHT),
                "state": state,
                "slow": slower_than(s, median),
                "text": duration_text(s),
                "run_id": columns[i]["run"]["run_id"],
            }
            for i, s, state in samples
        ]
        out.append(
            {
                "task_id": task_id,
                "bars": bars,
                "median": duration_text(statistics.median(values)) if values else "",
                "last": duration_text(values[-1]) if values else "",
                "width": max(len(columns), 1) * (BAR_W + GAP),
            }
        )
    return out
