"""A real pinflow cluster for the run benchmarks (dispatch, throughput): start, push, run.

The run is watched through the runs list (one row, no tasks) a few times a second, so the
watching costs the API server next to nothing; the run with its tasks is read once at the end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support.cluster import Cluster

POLL_SECONDS = 0.25
# The two ways to run workers, compared by the run benchmarks: `pinflow worker` forks a work
# horse per task (isolation); `--no-fork` runs tasks in the worker process (speed).
WORKER_MODES: dict[str, tuple[str, ...]] = {
    "forking workers (default)": (),
    "pinflow worker --no-fork": ("--no-fork",),
}


@contextmanager
def cluster(
    home: Path,
    workers: int,
    worker_args: tuple[str, ...] = (),
    database_url: str | None = None,
    **env: str,
) -> Iterator[Cluster]:
    """API server, one scheduler and `workers` RQ workers on SQLite (or `database_url`),
    always stopped. PINFLOW_WARM_DAGS in the benchmark's own environment reaches the workers
    (to measure what warming buys: `PINFLOW_WARM_DAGS=0 python -m bench throughput`)."""
    home.mkdir(parents=True, exist_ok=True)
    if "PINFLOW_WARM_DAGS" in os.environ:
        env.setdefault("PINFLOW_WARM_DAGS", os.environ["PINFLOW_WARM_DAGS"])
    url = database_url or f"sqlite:///{home}/pinflow.db"
    backend = "postgresql" if url.startswith("postgresql") else "sqlite"
    running = Cluster(home, url, backend, **env)
    running.worker_args = list(worker_args)
    try:
        running.start(schedulers=1, workers=workers)
        yield running
    finally:
        running.stop()


def publish(running: Cluster, work: Path, dag_file: str, source: str) -> str:
    """Push one DAG file to a new repo; returns the commit."""
    repo = running.repo(f"bench-{work.name}", work)
    return running.push(repo, "bench", **{dag_file: source})


def run_to_end(running: Cluster, dag_id: str, timeout: float = 900) -> tuple[dict[str, Any], float]:
    """Trigger `dag_id` and wait for its run to end: the run with its tasks, and the seconds."""
    started = time.perf_counter()
    run_id = running.trigger(dag_id)["run_id"]
    deadline = time.monotonic() + timeout
    with running.api("read") as api:
        while time.monotonic() < deadline:
            latest = api.get("/runs", params={"dag_id": dag_id, "limit": 1}).json()["items"][0]
            if latest["state"] in ("success", "failed"):
                break
            time.sleep(POLL_SECONDS)
        else:
            raise RuntimeError(f"run {run_id} did not end in {timeout:g} s\n{running.logs()}")
    seconds = time.perf_counter() - started
    run = running.run(run_id)
    if run["state"] != "success":
        raise RuntimeError(f"run {run_id} ended {run['state']}\n{running.logs()}")
    return run, seconds


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]
