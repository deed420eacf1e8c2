"""Dispatch latency: how soon a downstream task starts after its upstream ends.

A 100-task chain of no-op tasks runs on a real cluster (API server with Redis, one scheduler,
two forking RQ workers, SQLite). For each link the gap between the upstream's `ended_at` and
the downstream's `started_at` (both stamped by the database's clock) is the dispatch latency:
the finish report, the downstream enqueued by the API server at once, the RQ pick-up, the fork,
the claim. Goal (issue 8): p50 ≤ 20 ms, p99 ≤ 100 ms.

Run: `.venv/bin/python -m bench.dispatch` (or `make bench`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench._stats import Goal
from tests.support.cluster import Cluster

TASKS = 100


def chain_dag(dag_id: str) -> str:
    lines = ["from pinflow import DAG, task", "", f'with DAG("{dag_id}", schedule=None):']
    lines += ["    @task", "    def noop(x=0):", "        return x + 1", ""]
    lines += ["    out = noop.override(task_id='t000')()"]
    lines += [f"    out = noop.override(task_id='t{i:03}')(out)" for i in range(1, TASKS)]
    return "\n".join(lines) + "\n"


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def main() -> list[Goal]:
    with tempfile.TemporaryDirectory(prefix="pinflow-bench-dispatch-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        cluster = Cluster(home, f"sqlite:///{home}/pinflow.db", "sqlite")
        try:
            cluster.start(schedulers=1, workers=2)
            work = cluster.repo("dispatch", Path(tmp) / "w")
            cluster.push(work, "chain", **{"dags/chain.py": chain_dag("chain")})
            started = time.perf_counter()
            run = cluster.wait(cluster.trigger("chain")["run_id"], timeout=600)
            wall = time.perf_counter() - started
        finally:
            cluster.stop()
    assert run["state"] == "success", run
    tasks = {t["task_id"]: t for t in run["tasks"]}
    gaps = sorted(
        (
            parse_time(tasks[f"t{i:03}"]["started_at"])
            - parse_time(tasks[f"t{i - 1:03}"]["ended_at"])
        ).total_seconds()
        * 1000
        for i in range(1, TASKS)
    )
    p50 = statistics.median(gaps)
    p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
    table = Table(title=f"dispatch latency over a {TASKS}-task chain (ms)")
    for column in ("links", "p50", "p90", "p99", "max", "run wall time s"):
        table.add_column(column, justify="right")
    p90 = gaps[int(len(gaps) * 0.9)]
    table.add_row(
        str(len(gaps)), f"{p50:.1f}", f"{p90:.1f}", f"{p99:.1f}", f"{gaps[-1]:.1f}", f"{wall:.1f}"
    )
    Console().print(table)
    print(
        f"goal p50 <= 20 ms: {'met' if p50 <= 20 else 'not met'}; "
        f"goal p99 <= 100 ms: {'met' if p99 <= 100 else 'not met'}"
    )
    return [
        Goal(
            "dispatch latency",
            "upstream end → downstream start, p50",
            f"{p50:.0f} ms",
            "<= 20 ms",
            p50 <= 20,
        ),
        Goal(
            "dispatch latency",
            "upstream end → downstream start, p99",
            f"{p99:.0f} ms",
            "<= 100 ms",
            p99 <= 100,
        ),
    ]


if __name__ == "__main__":
    main()
