"""Warm task start: what a worker adds at task start when the version is already cached.

A task of a version this host has run before costs, before its code runs: the cache lookup
(`VersionCache.ensure`: one stat of the ready marker, no network), holding the version so
eviction spares it (`VersionCache.using`: open the lock file, shared flock, touch the
last-used marker) and the DAG file, already imported by the worker parent before the fork
(`runner.warm`). Measured on a real cache folder holding the 500-file benchmark repo, 2,000
times. Goal (issue 8): ≤ 1 ms.

Run: `.venv/bin/python -m bench.taskstart` (or `make bench`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench._cluster import percentile
from bench._repo import repo_files
from bench._stats import Goal
from runner.cache import READY, VersionCache
from runner.client import WorkerClient
from runner.warm import WarmDags

REPS = 2000
GOAL_MS = 1.0
SHA = "0123456789abcdef0123456789abcdef01234567"


def install(cache: VersionCache) -> Path:
    """The benchmark repo as an installed version, as `VersionCache` leaves one."""
    root = cache.path("bench", SHA)
    for rel, content in repo_files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    (root / READY).write_text("0")
    (cache.root / ".locks").mkdir()  # made by the download that installed it
    return root


def main() -> list[Goal]:
    with tempfile.TemporaryDirectory(prefix="pinflow-bench-taskstart-") as tmp:
        client = WorkerClient("http://127.0.0.1:9", "unused")  # a hit must not call it
        cache = VersionCache(Path(tmp) / "cache", client)
        root = install(cache)
        warm = WarmDags()
        warm.get(root, "dags/bench_etl_0.py", SHA)  # what the worker parent did before forking
        samples = []
        for _ in range(REPS):
            started = time.perf_counter()
            fetched = cache.ensure("bench", SHA)
            with cache.using("bench", SHA) as held:
                warm.get(held, "dags/bench_etl_0.py", SHA)
            samples.append((time.perf_counter() - started) * 1e6)
            assert fetched.hit
        client.close()
    samples.sort()
    p50, p99 = statistics.median(samples), percentile(samples, 0.99)
    table = Table(title=f"warm task start, {REPS} times (µs)")
    for column in ("step", "p50 µs", "p90 µs", "p99 µs", "max µs"):
        table.add_column(column, justify="left" if column == "step" else "right")
    p90 = percentile(samples, 0.9)
    step = "cache hit + hold the version + warm DAG file"
    table.add_row(step, f"{p50:.0f}", f"{p90:.0f}", f"{p99:.0f}", f"{samples[-1]:.0f}")
    Console(width=120).print(table)
    return [
        Goal("version fetch", "warm task start overhead, p50", f"{p50 / 1000:.3f} ms",
             f"<= {GOAL_MS:g} ms", p50 / 1000 <= GOAL_MS),
        Goal("version fetch", "warm task start overhead, p99", f"{p99 / 1000:.3f} ms",
             f"<= {GOAL_MS:g} ms", p99 / 1000 <= GOAL_MS),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
