"""The task graph's layout (pinflow.ui.graph): every task a box, every dependency an arrow from
left to right, no two boxes on top of each other, and a 200-task DAG a drawing a person can
scroll through (a few screens, not dozens), with igraph and with the fallback without it."""

from __future__ import annotations

import builtins
import random
from typing import Any

import pytest

from pinflow.ui import graph


def layered(tasks: int = 200, width: int = 20, seed: int = 7) -> list[dict[str, Any]]:
    """A wide DAG: layers of `width` tasks, each after 1-3 of the layer before, a tenth also
    after a task further back (a long edge, drawn through the layers it crosses)."""
    rng = random.Random(seed)
    out = []
    for i in range(tasks):
        layer = i // width
        ups: set[str] = set()
        if layer:
            for _ in range(rng.randint(1, 3)):
                ups.add(f"t{rng.randrange((layer - 1) * width, layer * width)}")
            if layer > 1 and rng.random() < 0.1:
                ups.add(f"t{rng.randrange(0, (layer - 1) * width)}")
        out.append({"task_id": f"t{i}", "upstream": sorted(ups)})
    return out


def chain(tasks: int) -> list[dict[str, Any]]:
    return [{"task_id": f"c{i}", "upstream": [f"c{i - 1}"] if i else []} for i in range(tasks)]


@pytest.fixture(params=["igraph", "longest-path"])
def engine(request, monkeypatch) -> str:
    """Each test twice: with igraph, and as on a machine where igraph cannot be imported."""
    graph.layout.cache_clear()
    if request.param == "longest-path":
        real = builtins.__import__

        def no_igraph(name, *args, **kwargs):
            if name == "igraph" or name.startswith("igraph."):
                raise ImportError("no igraph here")
            return real(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_igraph)
    yield request.param
    graph.layout.cache_clear()


def check_drawing(tasks: list[dict[str, Any]], engine: str) -> dict[str, Any]:
    drawn = graph.drawing(tasks, {t["task_id"]: ["success"] for t in tasks})
    assert drawn["engine"] == engine
    nodes = {n["task_id"]: n for n in drawn["nodes"]}
    assert set(nodes) == {t["task_id"] for t in tasks}
    expected = {(u, t["task_id"]) for t in tasks for u in t["upstream"]}
    assert {(e["from"], e["to"]) for e in drawn["edges"]} == expected
    assert len(drawn["edges"]) == len(expected)
    boxes = sorted((n["x"], n["y"]) for n in drawn["nodes"])
    assert len(set(boxes)) == len(boxes), "two tasks drawn in one place"
    w, h = drawn["node_w"], drawn["node_h"]
    for n in drawn["nodes"]:
        assert n["x"] >= 0 and n["x"] + w <= drawn["width"]
        assert n["y"] >= 0 and n["y"] + h <= drawn["height"]
        for m in drawn["nodes"]:  # boxes in one column do not overlap
            if m is not n and m["x"] == n["x"]:
                assert abs(m["y"] - n["y"]) >= h, (n["task_id"], m["task_id"])
    for u, t in expected:  # every arrow runs left to right, into its task's left side
        assert nodes[u]["x"] < nodes[t]["x"]
    for e in drawn["edges"]:
        start, end = e["d"].split()[0], e["d"].split()[-1]
        assert start.startswith("M")
        x0, _ = (float(v) for v in start[1:].split(","))
        x1, y1 = (float(v) for v in end.split(","))
        assert x0 == pytest.approx(nodes[e["from"]]["x"] + w, abs=1)
        assert x1 == pytest.approx(nodes[e["to"]]["x"], abs=1)
        assert y1 == pytest.approx(nodes[e["to"]]["y"] + h / 2, abs=1)
    return drawn


def test_a_small_dag(engine: str):
    tasks = [
        {"task_id": "extract", "upstream": []},
        {"task_id": "clean", "upstream": ["extract"]},
        {"task_id": "enrich", "upstream": ["extract"]},
        {"task_id": "load", "upstream": ["clean", "enrich"]},
        {"task_id": "audit", "upstream": ["extract"]},
    ]
    drawn = check_drawing(tasks, engine)
    columns = sorted({n["x"] for n in drawn["nodes"]})
    assert len(columns) == 3  # extract | clean, enrich, audit | load


def test_two_hundred_tasks_stay_readable(engine: str):
    """10 layers of 20 tasks: the drawing is about as tall as its fullest layer (long edges add
    a few rows), not spread over four times that (igraph's own positions gave 77 rows)."""
    tasks = layered()
    drawn = check_drawing(tasks, engine)
    rows = drawn["height"] / (graph.NODE_H + graph.GAP_Y)
    assert rows <= 20 * 1.6, f"{rows:.0f} rows for layers of 20 tasks"
    assert len({n["x"] for n in drawn["nodes"]}) == 10
    assert drawn["width"] <= 10 * (graph.NODE_W + graph.GAP_X) + 2 * graph.PAD


def test_long_names_are_shortened_and_kept_whole_in_the_tooltip():
    name = "a_task_with_a_name_far_too_long_for_its_box"
    drawn = graph.drawing([{"task_id": name, "upstream": []}], {name: ["failed"]})
    (node,) = drawn["nodes"]
    assert node["label"].endswith("…") and len(node["label"]) == graph.LABEL_CHARS
    assert node["task_id"] == name and node["state"] == "failed"


def test_a_mapped_task_shows_its_count_and_its_most_urgent_state():
    tasks = [{"task_id": "fan", "upstream": []}, {"task_id": "gone", "upstream": ["fan"]}]
    drawn = graph.drawing(tasks, {"fan": ["success", "failed", "success"]})
    fan, gone = drawn["nodes"]
    assert (fan["mapped"], fan["state"]) == (3, "failed")
    assert "2 success" in fan["title"] and "1 failed" in fan["title"]
    assert (gone["state"], gone["title"]) == ("none", "not in this run")


def test_a_long_chain_is_one_row(engine: str):
    drawn = check_drawing(chain(30), engine)
    assert len({n["y"] for n in drawn["nodes"]}) == 1


def test_a_graph_too_big_to_lay_out_is_not_drawn():
    """A pushed DAG of 1,000 chained tasks must not cost a server a layout at each page view."""
    chain = [{"task_id": f"t{i}", "upstream": [f"t{i - 1}"] if i else []} for i in range(1000)]
    drawn = graph.drawing(chain, {})
    assert "1,000 tasks" in drawn["too_big"] and "nodes" not in drawn
    dense = [{"task_id": f"t{i}", "upstream": [f"t{j}" for j in range(i)]} for i in range(100)]
    assert "dependencies" in graph.drawing(dense, {})["too_big"]
