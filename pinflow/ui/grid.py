"""The DAG page's grid (a column per run, oldest logical date first; a row per task) and its
durations' bars, written here as HTML rather than in the template.

A 200-task DAG with 25 runs is 5,000 cells and 5,000 bars: through Jinja, each an expression
evaluation, an autoescape and a URL-quote per value, the page took a second. Here each run id
and task id is escaped and quoted once, and each cell is one f-string: the same markup, about
twenty times faster. Every value from the database goes through `html.escape` (quotes
included) or `url_part`.
"""

from __future__ import annotations

import functools
from html import escape
from typing import Any

from markupsafe import Markup

from pinflow.ui.durations import BAR_W, HEIGHT
from pinflow.ui.render import url_part
from pinflow.ui.states import group_state, group_title


def grid_view(columns: list[dict[str, Any]], task_ids: list[str]) -> list[dict[str, Any]]:
    """The grid's columns, oldest logical date first: per task the states of its instances
    (several for a mapped task), and the marks of the header: the commit changed from the
    column before, tries ran more than one commit, a task was retried."""
    grid = []
    for i, col in enumerate(columns):
        states: dict[str, list[str]] = {}
        for task_id, _, state, _, _ in col["instances"]:
            states.setdefault(task_id, []).append(state)
        cells = {
            t: {"state": group_state(st), "title": group_title(st), "mapped": len(st) > 1}
            for t, st in states.items()
        }
        changed = i > 0 and col["run"]["sha"] != columns[i - 1]["run"]["sha"]
        grid.append({**col, "states": states, "cells": cells, "changed": changed})
    return grid


def grid_rows(grid: list[dict[str, Any]], task_ids: list[str]) -> Markup:
    """The grid's body: a row per task, a coloured cell per run linking to that task in that
    run; its state is the link's title (the accessible name too: the cell has no text)."""
    runs = [_run_href(col["run"]["run_id"]) for col in grid]
    out = []
    for task_id in task_ids:
        name, query = escape(task_id), url_part(task_id)
        cells = []
        for col, href in zip(grid, runs, strict=True):
            c = col["cells"].get(task_id)
            if c is None:
                cells.append('<td class="cell absent" title="not in this run"></td>')
                continue
            mapped = " mapped" if c["mapped"] else ""
            cells.append(
                f'<td class="cell s-{escape(c["state"])}{mapped}"><a href="{href}{query}"'
                f' title="{name}: {escape(c["title"])}"></a></td>'
            )
        out.append(f'<tr><th scope="row" class="task-name">{name}</th>{"".join(cells)}</tr>')
    return Markup("\n".join(out))


def duration_rows(durations: list[dict[str, Any]]) -> Markup:
    """The durations table's body: per task its bars (`durations.task_durations`), each with
    its time on hover, then the median and the latest. A slow bar is outlined and links to its
    run (5,000 links were most of the page's weight; the grid above links every cell)."""
    out = []
    for d in durations:
        name, task = escape(d["task_id"]), url_part(d["task_id"])
        bars = []
        for b in d["bars"]:
            rect = (
                f'<rect class="bar s-{escape(b["state"])}{" slow" if b["slow"] else ""}"'
                f' x="{b["x"]}" y="{HEIGHT + 1 - b["h"]:.1f}" width="{BAR_W}"'
                f' height="{b["h"]:.1f}">'
            )
            if b["slow"]:
                bars.append(
                    f'<a href="{_run_href(b["run_id"])}{task}">{rect}<title>{escape(b["text"])}'
                    f" · slow ({escape(b['run_id'])})</title></rect></a>"
                )
            else:
                bars.append(f"{rect}<title>{escape(b['text'])}</title></rect>")
        chart = (
            f'<svg class="spark" width="{d["width"]}" height="28" viewBox="0 0 {d["width"]} 28"'
            f' role="img" aria-label="durations of {name}">{"".join(bars)}</svg>'
            if bars
            else '<span class="muted">not run yet</span>'
        )
        out.append(
            f'<tr><th scope="row" class="task-name">{name}</th><td>{chart}</td>'
            f'<td class="num">{escape(d["median"])}</td><td class="num">{escape(d["last"])}</td>'
            "</tr>"
        )
    return Markup("\n".join(out))


@functools.lru_cache(maxsize=1024)
def _run_href(run_id: str) -> str:
    return f"/runs/{url_part(run_id)}?task="
