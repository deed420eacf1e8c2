"""Throughput: 1,000 no-op tasks of one fan-out DAG through 2 workers, end to end.

One root task fans out to 999 leaves, all no-ops, on a real cluster (API server with Redis,
one scheduler, two forking RQ workers, SQLite). Tasks per second is 1,000 over the time from
the trigger to the run's end as the API reports it; the leaves' rate is also given (first leaf
start to last leaf end). While the run goes, py-spy samples every process (server, scheduler,
workers and their forked work horses) and the samples are summed by where they were taken:
fork, version fetch, DAG import, HTTP on either side, database, Redis. Goals (issue 17): ≥ 100
tasks/s with forking workers, ≥ 150 with `--no-fork`, on 2 cores. The reference in the same run
is RQ by itself (`bench._rqalone`): as many no-op jobs through as many RQ workers of the same
kind, no pinflow code.

Run: `.venv/bin/python -m bench.throughput` (or `make bench`); `--no-profile` skips py-spy.
`--database postgresql` runs it on one PostgreSQL, `--database replicated` on a primary with a
synchronous hot standby (issue 26: the cost of synchronous replication), both with fsync on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench._cluster import WORKER_MODES, cluster, parse_time, publish, run_to_end
from bench._profile import IDLE, Sampler, categorize, cpu_seconds, read_raw, table, top_frames
from bench._rqalone import rq_alone
from bench._stats import Goal
from tests.support.cluster import Cluster
from tests.support.pg_ha import ReplicatedPostgres

TASKS = 1000
WORKERS = 2
# Issue 17's goals per worker mode, and the figures recorded before it (BENCHMARKS.md).
GOALS = {
    "forking workers (default)": (100.0, "24–38/s"),
    "pinflow worker --no-fork": (150.0, "57–65/s"),
}
RATE = 100  # py-spy samples per second and process

# What a sample's innermost claimed frame says it was doing (see bench._profile.categorize).
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("fork a work horse", ("fork_work_horse (",)),
    ("version cache (fetch, unpack, lock)", ("runner/cache.py",)),
    ("import the DAG file", ("dagstore/parsing/loader.py", "runner/warm.py", "<frozen importlib")),
    ("HTTP client (claim, heartbeat, finish)", ("runner/client.py", "httpx/", "httpcore/")),
    ("database (SQLAlchemy, SQLite)", ("sqlalchemy/", "sqlite3", "psycopg")),
    ("Redis (RQ bookkeeping, enqueue)", ("rq/", "redis/")),
    ("auth, routing, validation", ("fastapi/", "starlette/", "pydantic", "dagstore/api/auth.py")),
    ("HTTP server (uvicorn, asyncio)", ("uvicorn/", "asyncio/", "anyio/")),
    ("pinflow's own code", ("scheduler/", "dagstore/", "runner/")),
]


def process_kind(name: str) -> str:
    """`worker-w1` → `worker`: the table sums processes of one kind."""
    return name.split("-", 1)[0]


def fanout_dag(dag_id: str) -> str:
    return "\n".join(
        [
            "from pinflow import DAG, task",
            "",
            f'with DAG("{dag_id}", schedule=None):',
            "    @task",
            "    def noop(x=0):",
            "        return x",
            "",
            "    root = noop.override(task_id='root')()",
            f"    for i in range({TASKS - 1}):",
            "        noop.override(task_id=f'leaf_{i:03}')(root)",
            "",
        ]
    )


def leaves_rate(run: dict) -> float:
    leaves = [t for t in run["tasks"] if t["task_id"] != "root"]
    first = min(parse_time(t["started_at"]) for t in leaves)
    last = max(parse_time(t["ended_at"]) for t in leaves)
    return len(leaves) / (last - first).total_seconds()


def process_pids(running: Cluster) -> dict[str, int]:
    assert running.server is not None and running.server.proc is not None
    pids = {"server": running.server.proc.pid}
    pids |= {p.name: p.proc.pid for p in running.schedulers + running.workers if p.proc}
    if running.redis.proc is not None:
        pids["redis-server"] = running.redis.proc.pid
    return pids


def cpu_by_kind(pids: dict[str, int]) -> Counter[str]:
    spent: Counter[str] = Counter()
    for name, pid in pids.items():
        spent[process_kind(name)] += cpu_seconds(pid)
    return spent


def measured_run(running: Cluster) -> tuple[dict, float, Counter[str]]:
    """One run, unprofiled: the run, its seconds, and the CPU seconds each kind of process
    spent meanwhile (workers include their exited work horses)."""
    pids = process_pids(running)
    before = cpu_by_kind(pids)
    run, wall = run_to_end(running, "fanout")
    after = cpu_by_kind(pids)
    return run, wall, Counter({kind: after[kind] - before[kind] for kind in after})


def profiled_run(running: Cluster, folder: Path, keep: Path | None) -> tuple[dict, str]:
    """A second run under py-spy: samples per process, or why there are none."""
    sampler = Sampler(folder, rate=RATE).start(process_pids(running))
    try:
        run_to_end(running, "fanout")
    finally:
        profiles = sampler.stop()
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
        for path in profiles.values():
            shutil.copy(path, keep / path.name)
    return {name: read_raw(path) for name, path in profiles.items()}, sampler.error


# Frames every sample of a process passes through (entry points, event loops, RQ's work loop):
# left out of the "top functions" list, where they would only push the informative ones down.
ENTRY = (
    "typer/",
    "_click/",
    "threading.py",
    "cli/",
    "<module>",
    "process ",
    "_asyncio.py",
    "BaseWorker.work ",
    "runners.py",
    "uvicorn/main.py",
    "_compat.py",
    "Server.run ",
)


def print_profile(console: Console, stacks: dict[str, list]) -> None:
    counts: Counter[str] = Counter()
    for name, samples in stacks.items():
        for where, count in categorize(samples, CATEGORIES).items():
            counts[f"{process_kind(name)}: {where}"] += count
    console.print(table("CPU samples (profiled run), by where", counts, 1 / RATE))
    console.print("top functions (inclusive samples, all processes, waiting excluded):")
    busy = [s for v in stacks.values() for s in v if not any(m in s[0][-1] for m in IDLE)]
    shown = [(n, c) for n, c in top_frames(busy, 200) if not any(e in n for e in ENTRY)]
    for name, count in shown[:25]:
        console.print(f"  {count:6}  {name}", markup=False, highlight=False)


@dataclass
class Result:
    mode: str
    wall: float
    leaves_per_second: float
    cpu: Counter[str]
    stacks: dict[str, list] = field(default_factory=dict)
    profile_error: str = ""

    @property
    def rate(self) -> float:
        return TASKS / self.wall


DATABASES = ("sqlite", "postgresql", "replicated")


@contextmanager
def database(kind: str) -> Iterator[str | None]:
    """A database URL of that kind (None: the cluster's own SQLite), dropped afterwards."""
    if kind == "sqlite":
        yield None
        return
    pg = ReplicatedPostgres(replicated=kind == "replicated", durable=True).start()
    try:
        yield pg.create_database("bench")
    finally:
        pg.stop()


def measure(
    mode: str,
    args: tuple[str, ...],
    folder: Path,
    profile: bool,
    keep: Path | None,
    database_url: str | None = None,
) -> Result:
    with cluster(
        folder / "home", workers=WORKERS, worker_args=args, database_url=database_url
    ) as running:
        publish(running, folder / "fanout", "dags/fanout.py", fanout_dag("fanout"))
        run, wall, cpu = measured_run(running)
        result = Result(mode, wall, leaves_rate(run), cpu)
        if profile:
            keep_here = keep / ("no-fork" if args else "fork") if keep else None
            result.stacks, result.profile_error = profiled_run(running, folder, keep_here)
    return result


def print_result(console: Console, result: Result) -> None:
    console.print(f"[bold]{result.mode}[/]")
    spent = Table(title="CPU per process kind during the measured run (from /proc)")
    for column in ("process", "CPU s", "CPU ms per task", "share"):
        spent.add_column(column, justify="left" if column == "process" else "right")
    total = sum(result.cpu.values()) or 1
    for kind, seconds in result.cpu.most_common():
        spent.add_row(kind, f"{seconds:.1f}", f"{1000 * seconds / TASKS:.1f}",
                      f"{100 * seconds / total:.0f}%")  # fmt: skip
    cores = os.cpu_count() or 1
    capacity = f"of {cores * result.wall:.0f} s on {cores} cores"
    spent.add_row("all", f"{total:.1f}", f"{1000 * total / TASKS:.1f}", capacity)
    console.print(spent)
    if result.stacks:
        print_profile(console, result.stacks)
    elif result.profile_error:
        console.print(f"no profile: {result.profile_error}")


def main(argv: Sequence[str] = ()) -> list[Goal]:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput")
    parser.add_argument("--no-profile", action="store_true", help="skip the runs under py-spy")
    parser.add_argument("--save-profile", type=Path, help="keep py-spy's raw files here")
    parser.add_argument(
        "--database",
        choices=DATABASES,
        default="sqlite",
        help="SQLite; one PostgreSQL; or a primary with a synchronous standby",
    )
    args = parser.parse_args(list(argv))
    console = Console(width=120)
    console.print(f"database: {args.database}")
    results = []
    for mode, worker_args in WORKER_MODES.items():
        with (
            tempfile.TemporaryDirectory(prefix="pinflow-bench-throughput-") as tmp,
            database(args.database) as url,
        ):
            results.append(
                measure(mode, worker_args, Path(tmp), not args.no_profile, args.save_profile, url)
            )
    for result in results:
        print_result(console, result)
    figures = Table(title=f"{TASKS} no-op tasks (1 root → {TASKS - 1} leaves), {WORKERS} workers")
    columns = ("workers", "trigger → run end s", "tasks/s", "leaves/s", "CPU ms per task",
               "RQ alone, jobs/s", "pinflow / RQ alone")  # fmt: skip
    for column in columns:
        figures.add_column(column, justify="left" if column == "workers" else "right")
    for r in results:
        cpu_ms = 1000 * sum(r.cpu.values()) / TASKS
        alone = rq_alone(TASKS, WORKERS, forking=not WORKER_MODES[r.mode])  # no --no-fork
        figures.add_row(r.mode, f"{r.wall:.1f}", f"{r.rate:.1f}", f"{r.leaves_per_second:.1f}",
                        f"{cpu_ms:.1f}", f"{alone:.0f}", f"{r.rate / alone:.2f}x")  # fmt: skip
    console.print(figures)
    goals = []
    for r in results:
        goal, before = GOALS[r.mode]
        goals.append(Goal("throughput", f"{TASKS} no-op fan-out tasks, {WORKERS} {r.mode}",
                          f"{r.rate:.0f}/s", f">= {goal:g}/s", r.rate >= goal, before=before))
    return goals  # fmt: skip


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
