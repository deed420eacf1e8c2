"""The run page's Gantt (pinflow.ui.gantt.chart): a bar per try on one time axis, a retry a
bar of its own, a try on another commit marked, a running try reaching to now, a slow one
flagged; and durations as people read them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pinflow.ui.clock import duration_text
from pinflow.ui.gantt import LABEL_W, PLOT_W, chart

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
RUN_SHA, NEW_SHA = "a" * 40, "b" * 40


def at(seconds: float | None) -> str | None:
    return None if seconds is None else (T0 + timedelta(seconds=seconds)).isoformat()


def attempt(n: int, state: str, queued: float, start: float, end: float | None, sha=RUN_SHA):
    return {
        "try_number": n,
        "state": state,
        "sha": sha,
        "queued_at": at(queued),
        "started_at": at(start),
        "ended_at": at(end),
    }


def task(task_id: str, state: str, tries: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "state": state,
        "tries": tries,
        "try_number": len(tries),
        "sha": RUN_SHA,
        "queued_at": None,
        **more,
    }


def test_a_bar_per_try_on_one_axis():
    run = {
        "sha": RUN_SHA,
        "shas": [RUN_SHA, NEW_SHA],
        "tasks": [
            task("extract", "success", [attempt(1, "success", 0, 1, 3)]),
            task(
                "enrich",
                "success",
                [attempt(1, "failed", 3, 4, 5), attempt(2, "success", 6, 6.5, 8, NEW_SHA)],
            ),
            task("load", "running", [attempt(1, "running", 8, 9, None)]),
        ],
    }
    now = T0 + timedelta(seconds=20)
    drawn = chart(run, now, usual={})
    rows = [(r["task_id"], r["try_number"], r["state"]) for r in drawn["rows"]]
    assert rows == [
        ("extract", 1, "success"),
        ("enrich", 1, "failed"),
        ("enrich", 2, "success"),
        ("load", 1, "running"),
    ]
    extract, first, retry, load = drawn["rows"]
    assert retry["label"] == "" and first["label"] == "enrich"  # the retry: its own bar
    assert retry["commit"] == 1 and first["commit"] == 0  # another commit than the run's
    # One axis: 0 s at the left of the plot, `now` at its right; a running try reaches now.
    assert extract["x_queued"] == LABEL_W
    assert extract["x_start"] == LABEL_W + PLOT_W / 20
    assert load["x_end"] == LABEL_W + PLOT_W and load["took"] == "11 s"
    assert first["x_end"] <= retry["x_queued"] < retry["x_start"] < retry["x_end"]
    # ... and the next poll redraws it longer: the chart is live with the page's fragment.
    later = chart(run, now + timedelta(seconds=10), usual={})["rows"][-1]
    assert later["took"] == "21 s"
    assert [t["text"] for t in drawn["ticks"]][:3] == ["0 s", "5 s", "10 s"]
    quick = {"sha": RUN_SHA, "tasks": [task("x", "success", [attempt(1, "success", 0, 0.1, 0.9)])]}
    ticks = [t["text"] for t in chart(quick, T0, usual={})["ticks"]]
    assert ticks == ["0 s", "0.2 s", "0.4 s", "0.6 s", "0.8 s"]  # a sub-second run's axis


def test_a_slow_try_stands_out_and_a_queued_task_waits():
    run = {
        "sha": RUN_SHA,
        "tasks": [
            task("fast", "success", [attempt(1, "success", 0, 0, 9)]),
            task("next", "queued", [], queued_at=at(9), try_number=1),
        ],
    }
    drawn = chart(run, T0 + timedelta(seconds=12), usual={"fast": [2.0, 2.5, 3.0]})
    fast, waiting = drawn["rows"]
    assert fast["slow"] and not waiting["try"] and waiting["state"] == "queued"
    usual = chart(run, T0 + timedelta(seconds=12), usual={"fast": [8.0, 9.0, 10.0]})
    assert not usual["rows"][0]["slow"]
    assert chart({"sha": RUN_SHA, "tasks": []}, T0, {})["rows"] == []


def test_durations_read_like_people_say_them():
    assert [duration_text(s) for s in (0.04, 0.4, 1.24, 42, 200, 180, 7500, 90000)] == [
        "40 ms",
        "0.4 s",
        "1.2 s",
        "42 s",
        "3 min 20 s",
        "3 min",
        "2 h 5 min",
        "1 d 1 h",
    ]
    assert duration_text(None) == ""
