"""A run's Gantt chart: one bar per try on a shared time axis, queued → started → ended,
written as SVG by `_gantt.html`, redrawn with the run's fragment while the run runs.

A retry is a bar of its own row (`try 2`), and a try that ran another commit than the run's
(after a clear on the latest version) is hatched and names its commit. A try far slower than
its task usually is (`is_slow`, judged against the DAG's recent runs) is outlined and marked.
"""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

from dagstore.authoring.mapping import instance_label
from pinflow.ui.clock import duration_text, parse_iso

LABEL_W, PLOT_W, ROW_H, AXIS_H = 230, 820, 22, 26
STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
         21600, 43200, 86400)  # fmt: skip


def usual_of(samples: list[float]) -> float | None:
    """What a task usually takes: its median over its recent runs, if it has 3 at least."""
    return statistics.median(samples) if len(samples) >= 3 else None


def slower_than(seconds: float | None, median: float | None) -> bool:
    """Slow: more than twice the task's usual time (`usual_of`), and by more than a second,
    so the jitter of a 50 ms task does not cry wolf."""
    if seconds is None or median is None:
        return False
    return seconds > 2 * median and seconds - median > 1.0


def is_slow(seconds: float | None, usual: list[float]) -> bool:
    return slower_than(seconds, usual_of(usual))


def _tick(seconds: float) -> str:
    return f"{round(seconds, 1):g} s" if seconds < 60 else duration_text(seconds)


def chart(run: dict[str, Any], now: datetime, usual: dict[str, list[float]]) -> dict[str, Any]:
    """Rows, bars and axis ticks of the run's Gantt, in pixels."""
    commits = [run["sha"], *(s for s in run.get("shas", []) if s != run["sha"])]
    rows: list[dict[str, Any]] = []
    for task in run["tasks"]:
        name = instance_label(task["task_id"], task.get("map_index"))
        for x in task["tries"]:
            start, end = parse_iso(x["started_at"]), parse_iso(x["ended_at"])
            seconds = ((end or now) - start).total_seconds() if start else None
            rows.append(
                {
                    "task_id": task["task_id"],
                    "label": name if x["try_number"] == task["tries"][0]["try_number"] else "",
                    "try_number": x["try_number"],
                    "state": x["state"],
                    "sha": x["sha"],
                    "commit": commits.index(x["sha"]) if x["sha"] in commits else 0,
                    "queued": parse_iso(x.get("queued_at")),
                    "start": start,
                    "end": end or now,
                    "seconds": seconds,
                    "slow": x["state"] != "running"
                    and is_slow(seconds, usual.get(task["task_id"], [])),
                    "try": True,
                }
            )
        waiting = task["state"] in ("queued", "up_for_retry", "scheduled")
        if waiting and task.get("queued_at") and task["try_number"] > len(task["tries"]):
            queued = parse_iso(task["queued_at"])
            rows.append(
                {
                    "task_id": task["task_id"],
                    "label": "" if task["tries"] else name,
                    "try_number": task["try_number"],
                    "state": task["state"],
                    "sha": task["sha"],
                    "commit": commits.index(task["sha"]) if task["sha"] in commits else 0,
                    "queued": queued,
                    "start": now,
                    "end": now,
                    "seconds": None,
                    "slow": False,
                    "try": False,
                }
            )
    moments = [m for r in rows for m in (r["queued"], r["start"], r["end"]) if m]
    if not moments:
        return {"rows": [], "ticks": [], "width": LABEL_W + PLOT_W, "height": AXIS_H}
    t0, t1 = min(moments), max(moments)
    span = max((t1 - t0).total_seconds(), 0.1)  # a run of quick tasks gets tenths

    def x(moment: datetime | None) -> float:
        return LABEL_W + (moment - t0).total_seconds() / span * PLOT_W if moment else LABEL_W

    for i, row in enumerate(rows):
        row["y"] = AXIS_H + i * ROW_H
        row["x_queued"] = x(row["queued"] or row["start"])
        row["x_start"] = x(row["start"])
        row["x_end"] = max(x(row["end"]), row["x_start"] + 2)  # a 10 ms try is still seen
        row["took"] = duration_text(row["seconds"])
    step = next((s for s in STEPS if span / s <= 8), STEPS[-1])
    ticks = [
        {"x": LABEL_W + k * step / span * PLOT_W, "text": _tick(k * step)}
        for k in range(int(span // step) + 1)
    ]
    return {
        "rows": rows,
        "ticks": ticks,
        "commits": commits,
        "width": LABEL_W + PLOT_W + 90,
        "height": AXIS_H + len(rows) * ROW_H + 4,
        "start": t0,
    }
