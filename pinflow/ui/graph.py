"""The task graph drawn: layered left to right, edges as arrows, one box per task coloured by
its state in a chosen run; the template `_graph.html` writes it as SVG, on the server.

The layout is igraph's Sugiyama layering (longest-path layers, barycenter crossing reduction,
long edges routed through the layers they cross); where igraph cannot be imported, a plain
longest-path layering takes its place. A DAG's structure is the same at every request until a
push changes it, so layouts are kept per structure (an LRU), and a page pays only for the
colouring: 200 tasks lay out in ~20 ms once, then cost nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pinflow.ui.states import group_state, group_title

NODE_W, NODE_H = 168, 30
GAP_X, GAP_Y = 56, 14
PAD = 8
LABEL_CHARS = 22  # what fits in NODE_W at the stylesheet's 12px

Structure = tuple[tuple[str, tuple[str, ...]], ...]  # (task_id, upstream ids), in DAG order


@dataclass(frozen=True)
class Layout:
    """Where each task's box sits (its top-left corner) and the points each edge passes."""

    boxes: dict[str, tuple[float, float]]
    edges: tuple[tuple[str, str, tuple[tuple[float, float], ...]], ...]
    width: float
    height: float
    engine: str


def structure_of(tasks: list[dict[str, Any]]) -> Structure:
    return tuple((t["task_id"], tuple(t.get("upstream") or ())) for t in tasks)


@functools.lru_cache(maxsize=128)
def layout(structure: Structure) -> Layout:
    """The drawing of one structure; the same structure is laid out once per process."""
    ids = [task_id for task_id, _ in structure]
    index = {task_id: i for i, task_id in enumerate(ids)}
    pairs = [(index[u], index[t]) for t, ups in structure for u in ups if u in index]
    try:
        points, routes, engine = _sugiyama(len(ids), pairs)
    except ImportError:
        points, routes, engine = _longest_path(len(ids), pairs)
    return _place(ids, pairs, *_compact(points, routes), engine)


def _sugiyama(n: int, pairs: list[tuple[int, int]]):
    import igraph

    graph = igraph.Graph(n=n, edges=pairs, directed=True)
    drawn = graph.layout_sugiyama(maxiter=100)
    points = [(float(layer), float(pos)) for pos, layer in drawn.coords[:n]]
    routes = [[(float(layer), float(pos)) for pos, layer in bends] for bends in drawn.edge_routing]
    return points, routes, "igraph"


def _longest_path(n: int, pairs: list[tuple[int, int]]):
    """Each task one layer right of its furthest upstream; tasks in a layer in DAG order."""
    ups: list[list[int]] = [[] for _ in range(n)]
    for u, t in pairs:
        ups[t].append(u)
    layer: list[int] = [-1] * n
    for start in range(n):  # iterative depth-first, so a 10,000-task chain cannot recurse
        stack = [start]
        while stack:
            node = stack[-1]
            if layer[node] >= 0:
                stack.pop()
                continue
            pending = [u for u in ups[node] if layer[u] < 0 and u not in stack]
            if pending:
                stack.extend(pending)
                continue
            layer[node] = 1 + max((layer[u] for u in ups[node] if layer[u] >= 0), default=-1)
            stack.pop()
    filled: dict[int, int] = {}
    points = []
    for node in range(n):
        points.append((float(layer[node]), float(filled.get(layer[node], 0))))
        filled[layer[node]] = filled.get(layer[node], 0) + 1
    return points, [[] for _ in pairs], "longest-path"


def _compact(points, routes, slack: float = 1.25):
    """Sugiyama's positioning lines a task up with its neighbours, and on a wide DAG that
    spreads a layer of 20 boxes over 80 rows. When the drawing is that much taller than its
    fullest layer, each layer keeps its order (so no new crossings) but takes consecutive
    rows, centred on the fullest layer: 200 tasks stay a screen or two high."""
    layers: dict[float, list[tuple[float, int, int]]] = {}  # layer -> (pos, edge or -1, bend)
    for i, (layer, pos) in enumerate(points):
        layers.setdefault(layer, []).append((pos, -1, i))
    for e, bends in enumerate(routes):
        for b, (layer, pos) in enumerate(bends):
            layers.setdefault(layer, []).append((pos, e, b))
    fullest = max((len(items) for items in layers.values()), default=0)
    every = [pos for items in layers.values() for pos, _, _ in items]
    if not every or max(every) - min(every) + 1 <= slack * fullest:
        return points, routes
    points, routes = list(points), [list(bends) for bends in routes]
    for layer, items in layers.items():
        items.sort()
        top = (fullest - len(items)) / 2
        for rank, (_, e, i) in enumerate(items):
            if e < 0:
                points[i] = (layer, top + rank)
            else:
                routes[e][i] = (layer, top + rank)
    return points, routes


def _place(ids, pairs, points, routes, engine) -> Layout:
    """Layer and position → pixels: layers are columns, positions rows."""
    low = min((pos for _, pos in points), default=0.0)
    for bends in routes:
        low = min([low, *(pos for _, pos in bends)])

    def xy(layer: float, pos: float) -> tuple[float, float]:
        return PAD + layer * (NODE_W + GAP_X), PAD + (pos - low) * (NODE_H + GAP_Y)

    boxes = {task_id: xy(*points[i]) for i, task_id in enumerate(ids)}
    edges = []
    for (u, t), bends in zip(pairs, routes, strict=True):
        (ux, uy), (tx, ty) = boxes[ids[u]], boxes[ids[t]]
        path = [(ux + NODE_W, uy + NODE_H / 2)]
        for layer, pos in bends:  # through the columns the edge crosses, where a box would be
            x, y = xy(layer, pos)
            path += [(x, y + NODE_H / 2), (x + NODE_W, y + NODE_H / 2)]
        path.append((tx, ty + NODE_H / 2))
        edges.append((ids[u], ids[t], tuple(path)))
    width = max((x for x, _ in boxes.values()), default=0) + NODE_W + PAD
    height = max((y for _, y in boxes.values()), default=0) + NODE_H + PAD
    return Layout(boxes, tuple(edges), width, height, engine)


def edge_path(points: tuple[tuple[float, float], ...]) -> str:
    """An SVG path through the points, each step a curve that leaves and arrives level."""
    (x, y), rest = points[0], points[1:]
    out = [f"M{x:.0f},{y:.0f}"]
    for nx, ny in rest:
        mid = (x + nx) / 2
        out.append(f"C{mid:.0f},{y:.0f} {mid:.0f},{ny:.0f} {nx:.0f},{ny:.0f}")
        x, y = nx, ny
    return " ".join(out)


def short_label(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


# A layout's cost grows faster than its size (a 1,000-task chain took 36 s of CPU and 75 MB of
# SVG): past these a pushed DAG would tie up a server at every page view, so it is not drawn.
MAX_DRAWN_TASKS, MAX_DRAWN_EDGES = 500, 3000


def drawing(tasks: list[dict[str, Any]], instances: dict[str, list[str]]) -> dict[str, Any]:
    """What `_graph.html` draws: `instances` maps each task to its instances' states in the
    chosen run (several for a mapped task; none when the run lacks the task)."""
    edge_count = sum(len(t.get("upstream") or ()) for t in tasks)
    if len(tasks) > MAX_DRAWN_TASKS or edge_count > MAX_DRAWN_EDGES:
        return {
            "too_big": f"{len(tasks):,} tasks and {edge_count:,} dependencies: the graph is "
            f"drawn up to {MAX_DRAWN_TASKS:,} tasks and {MAX_DRAWN_EDGES:,} dependencies; the "
            "grid below shows every task"
        }
    drawn = layout(structure_of(tasks))
    nodes = []
    for task in tasks:
        task_id = task["task_id"]
        states = instances.get(task_id, [])
        x, y = drawn.boxes[task_id]
        nodes.append(
            {
                "task_id": task_id,
                "x": x,
                "y": y,
                "state": group_state(states) if states else "none",
                "title": group_title(states) if states else "not in this run",
                "label": short_label(task_id),
                "mapped": len(states) if len(states) > 1 else 0,
                "upstream": task.get("upstream") or [],
            }
        )
    edges = [{"from": u, "to": t, "d": edge_path(points)} for u, t, points in drawn.edges]
    return {
        "nodes": nodes,
        "edges": edges,
        "width": drawn.width,
        "height": drawn.height,
        "engine": drawn.engine,
        "node_w": NODE_W,
        "node_h": NODE_H,
    }
