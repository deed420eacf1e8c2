"""Dispatch latency: how soon a downstream task starts after its upstream ends.

A 100-task chain of no-op tasks runs on a real cluster (API server with Redis, one scheduler,
two forking RQ workers, SQLite). For each link the gap between the upstream's `ended_at` and
the downstream's `started_at` (both stamped by the database's clock) is the dispatch latency:
the rest of the finish report's transaction, the downstream enqueued by the API server at
once, the RQ pick-up, the fork, the claim. Goal (issue 8): p50 ≤ 20 ms, p99 ≤ 100 ms.

Run: `.venv/bin/python -m bench.dispatch` (or `make bench`).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench._cluster import WORKER_MODES, cluster, parse_time, percentile, publish, run_to_end
from bench._stats import Goal

TASKS = 100


def chain_dag(dag_id: str) -> str:
    lines = ["from pinflow import DAG, task", "", f'with DAG("{dag_id}", schedule=None):']
    lines += ["    @task", "    def noop(x=0):", "        return x + 1", ""]
    lines += ["    out = noop.override(task_id='t000')()"]
    lines += [f"    out = noop.override(task_id='t{i:03}')(out)" for i in range(1, TASKS)]
    return "\n".join(lines) + "\n"


def gaps_ms(run: dict) -> list[float]:
    """Downstream claim − upstream finish for every link of the chain, sorted, in ms."""
    tasks = {t["task_id"]: t for t in run["tasks"]}
    return sorted(
        (
            parse_time(tasks[f"t{i:03}"]["started_at"])
            - parse_time(tasks[f"t{i - 1:03}"]["ended_at"])
        ).total_seconds()
        * 1000
        for i in range(1, TASKS)
    )


def measure(worker_args: tuple[str, ...]) -> tuple[list[float], float]:
    """One chain run: the sorted gaps (ms) and the run's wall time (s)."""
    with (
        tempfile.TemporaryDirectory(prefix="pinflow-bench-dispatch-") as tmp,
        cluster(Path(tmp) / "home", workers=2, worker_args=worker_args) as running,
    ):
        publish(running, Path(tmp) / "chain", "dags/chain.py", chain_dag("chain"))
        run, wall = run_to_end(running, "chain")
    return gaps_ms(run), wall


def main() -> list[Goal]:
    table = Table(title=f"dispatch latency over a {TASKS}-task chain (ms), 2 workers")
    for column in ("workers", "links", "p50", "p90", "p99", "max", "run wall time s"):
        table.add_column(column, justify="left" if column == "workers" else "right")
    goals = []
    for mode, worker_args in WORKER_MODES.items():
        gaps, wall = measure(worker_args)
        p50, p90, p99 = statistics.median(gaps), percentile(gaps, 0.9), percentile(gaps, 0.99)
        table.add_row(mode, str(len(gaps)), f"{p50:.1f}", f"{p90:.1f}", f"{p99:.1f}",
                      f"{gaps[-1]:.1f}", f"{wall:.1f}")  # fmt: skip
        goals += [
            Goal("dispatch latency", f"end → downstream start, p50, {mode}", f"{p50:.0f} ms",
                 "<= 20 ms", p50 <= 20),
            Goal("dispatch latency", f"end → downstream start, p99, {mode}", f"{p99:.0f} ms",
                 "<= 100 ms", p99 <= 100),
        ]  # fmt: skip
    Console(width=120).print(table)
    return goals


if __name__ == "__main__":
    main()
