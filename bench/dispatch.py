"""Dispatch latency: how soon a downstream task's code starts after its upstream ends.

A 100-task chain of no-op tasks runs on a real cluster (API server with Redis, one scheduler,
two RQ workers, SQLite), with forking workers and with `--no-fork`. Each task returns the
wall-clock time at which its own code began. For each link the gap from the upstream's
`ended_at` (stamped by the database at its finish report) to that moment of the downstream is
the dispatch latency: the rest of the finish report's transaction, the downstream enqueued by
the API server at once, the RQ pick-up, the claim, the fork, the version cache, the upstream
results, the call. Everything runs on one host, so the two clocks are one. The claim alone
(`started_at`, which issue 8 measured) is shown too: since issue 14 the worker claims before
it forks, so it no longer includes the fork. Goals (issue 17): p50 ≤ 15 ms, p99 ≤ 50 ms
forking.

Then a 20-task chain, trigger → last task end, 5 times: the figure compared with Airflow
3.3 (4.9 s tuned, measured on this machine before issue 17). Goal ≤ 0.3 s forking.

Run: `.venv/bin/python -m bench.dispatch` (or `make bench`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench._cluster import WORKER_MODES, cluster, parse_time, percentile, publish, run_to_end
from bench._stats import Goal
from tests.support.cluster import Cluster

TASKS = 100
SHORT = 20
SHORT_RUNS = 5
AIRFLOW_SHORT_CHAIN = 4.9  # s, Airflow 3.3 tuned, same machine (before issue 17)


def chain_dag(dag_id: str, tasks: int) -> str:
    lines = ["from pinflow import DAG, task", "", f'with DAG("{dag_id}", schedule=None):']
    lines += ["    @task", "    def noop(x=0):", "        import time", "",
              "        return time.time()", ""]  # fmt: skip
    lines += ["    out = noop.override(task_id='t000')()"]
    lines += [f"    out = noop.override(task_id='t{i:03}')(out)" for i in range(1, tasks)]
    return "\n".join(lines) + "\n"


def _epoch(value: str) -> float:
    return parse_time(value).timestamp()


def gaps_ms(run: dict, start_of: str = "code") -> list[float]:
    """Downstream start − upstream finish for every link of the chain, sorted, in ms. The
    downstream's start is when its code began (its result) or its claim (`started_at`)."""
    tasks = {t["task_id"]: t for t in run["tasks"]}

    def started(task: dict) -> float:
        return float(task["result"]) if start_of == "code" else _epoch(task["started_at"])

    return sorted(
        (started(tasks[f"t{i:03}"]) - _epoch(tasks[f"t{i - 1:03}"]["ended_at"])) * 1000
        for i in range(1, len(tasks))
    )


@dataclass
class Measured:
    code: list[float]  # gaps to the downstream's code start, ms, sorted
    claim: list[float]  # gaps to its claim, ms, sorted
    wall: float  # the 100-task run, s
    short_chains: list[float]  # 20-task chain, trigger → last task end, s


def trigger_to_last_end(running: Cluster, dag_id: str) -> float:
    """Seconds from just before the trigger request to the last task's `ended_at`."""
    sent = time.time()
    run, _ = run_to_end(running, dag_id)
    return max(_epoch(t["ended_at"]) for t in run["tasks"]) - sent


def measure(worker_args: tuple[str, ...]) -> Measured:
    with (
        tempfile.TemporaryDirectory(prefix="pinflow-bench-dispatch-") as tmp,
        cluster(Path(tmp) / "home", workers=2, worker_args=worker_args) as running,
    ):
        publish(running, Path(tmp) / "chain", "dags/chain.py", chain_dag("chain", TASKS))
        publish(running, Path(tmp) / "short", "dags/short.py", chain_dag("short", SHORT))
        run, wall = run_to_end(running, "chain")
        trigger_to_last_end(running, "short")  # warm: the first run fetches the version
        shorts = [trigger_to_last_end(running, "short") for _ in range(SHORT_RUNS)]
    return Measured(gaps_ms(run), gaps_ms(run, "claim"), wall, sorted(shorts))


def main() -> list[Goal]:
    table = Table(title=f"dispatch latency over a {TASKS}-task chain (ms), 2 workers")
    for column in ("workers", "to", "links", "p50", "p90", "p99", "max", "run wall time s"):
        table.add_column(column, justify="left" if column in ("workers", "to") else "right")
    chains = Table(title=f"{SHORT}-task chain, trigger → last task end (s), {SHORT_RUNS} runs")
    for column in ("workers", "median", "min", "max", "Airflow 3.3 tuned (recorded)"):
        chains.add_column(column, justify="left" if column == "workers" else "right")
    goals = []
    for mode, worker_args in WORKER_MODES.items():
        got = measure(worker_args)
        for to, gaps in (("code start", got.code), ("claim", got.claim)):
            p50, p90, p99 = statistics.median(gaps), percentile(gaps, 0.9), percentile(gaps, 0.99)
            table.add_row(mode, to, str(len(gaps)), f"{p50:.1f}", f"{p90:.1f}", f"{p99:.1f}",
                          f"{gaps[-1]:.1f}", f"{got.wall:.1f}")  # fmt: skip
        p50, p99 = statistics.median(got.code), percentile(got.code, 0.99)
        short = statistics.median(got.short_chains)
        chains.add_row(mode, f"{short:.2f}", f"{got.short_chains[0]:.2f}",
                       f"{got.short_chains[-1]:.2f}", f"{AIRFLOW_SHORT_CHAIN:.1f}")  # fmt: skip
        forking = not worker_args
        goals += [
            Goal("dispatch latency", f"end → downstream code start, p50, {mode}",
                 f"{p50:.0f} ms", "<= 15 ms", p50 <= 15,
                 before="25–31 ms" if forking else "14–15 ms"),
            Goal("dispatch latency", f"end → downstream code start, p99, {mode}",
                 f"{p99:.0f} ms", "<= 50 ms", p99 <= 50,
                 before="43–46 ms" if forking else "35–36 ms"),
            Goal("20-task chain", f"trigger → last task end, median, {mode}",
                 f"{short:.2f} s", "<= 0.3 s", short <= 0.3,
                 before="0.51 s" if forking else "0.23 s"),
        ]  # fmt: skip
    console = Console(width=120)
    console.print(table)
    console.print(chains)
    return goals


if __name__ == "__main__":
    main()
