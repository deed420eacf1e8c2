"""API server CPU per task: claim + heartbeat + finish, as a worker sends them, nothing else.

The throughput benchmark shares two cores between the API server, RQ, the work horses and
Redis, so its per-process figures move with everything else. Here a real `pinflow server`
(SQLite, Redis for its enqueues) is the only busy process: one client plays the worker,
taking each job RQ holds, claiming it with the worker token, heartbeating once and finishing
with the try's credential, as `pinflow worker` does. The server's CPU (user + system, from
/proc) over the whole run, divided by the tasks, is what each task costs it; the root's
finish also queues and enqueues every leaf, so queueing is counted too. Goal (issue 17):
≤ 4 ms per task (it was 11–15 ms in the throughput profile).

Run: `.venv/bin/python -m bench.apicost` (or `make bench`); `--profile DIR` keeps py-spy's
samples of the server.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from redis import Redis
from rich.console import Console
from rich.table import Table
from rq.job import Job
from rq.serializers import JSONSerializer

from bench._cluster import cluster, publish
from bench._profile import Sampler, cpu_seconds, read_raw, top_frames
from bench._stats import Goal
from dagstore.core.protocol import job_id, queue_name
from tests.support.cluster import Cluster

LEAVES = 499
GOAL_MS = 4.0
BEFORE = "11–15 ms"


def fanout_dag(dag_id: str) -> str:
    return (
        "from pinflow import DAG, task\n\n"
        f'with DAG("{dag_id}", schedule=None):\n'
        "    @task\n    def noop(x=0):\n        return x\n\n"
        "    root = noop.override(task_id='root')()\n"
        f"    for i in range({LEAVES}):\n"
        "        noop.override(task_id=f'leaf_{i:03}')(root)\n"
    )


def take_jobs(redis: Redis, wanted: int, timeout: float = 30) -> list[dict]:
    """Pop RQ's job ids off pinflow's default queue and read each job's payload."""
    jobs: list[dict] = []
    key = f"rq:queue:{queue_name('default')}"
    deadline = time.monotonic() + timeout
    while len(jobs) < wanted and time.monotonic() < deadline:
        ids = [i.decode() for i in redis.lpop(key, wanted - len(jobs)) or []]
        for job in Job.fetch_many(ids, connection=redis, serializer=JSONSerializer):
            assert job is not None
            jobs.append(job.kwargs["payload"])
        if not ids:
            time.sleep(0.01)
    if len(jobs) < wanted:
        raise RuntimeError(f"only {len(jobs)} of {wanted} jobs were enqueued")
    return jobs


def claim(api: httpx.Client, worker_token: str, payload: dict) -> dict[str, str]:
    """The claim a worker sends (worker token); the try credential's header for the rest."""
    ti, attempt = payload["ti_id"], job_id(payload["ti_id"], payload["try_number"])
    claimed = api.post(
        f"/task-instances/{ti}/claim",
        json={"try_number": payload["try_number"], "worker": "bench", "attempt": attempt},
        headers={"Authorization": f"Bearer {worker_token}"},
    )
    claimed.raise_for_status()
    return {"Authorization": f"Bearer {claimed.json()['credential']}"}


def heartbeat(api: httpx.Client, payload: dict, as_try: dict[str, str]) -> None:
    body = {"try_number": payload["try_number"]}
    api.post(f"/task-instances/{payload['ti_id']}/heartbeat", json=body, headers=as_try)


def finish(api: httpx.Client, payload: dict, as_try: dict[str, str]) -> None:
    body = {"try_number": payload["try_number"], "state": "success", "result": 1,
            "log": "pinflow: task succeeded\n"}  # fmt: skip
    response = api.post(f"/task-instances/{payload['ti_id']}/finish", json=body, headers=as_try)
    response.raise_for_status()


@dataclass
class Phases:
    """Server CPU ms per task of each request kind, and of a bare health check."""

    claim: float = 0.0
    heartbeat: float = 0.0
    finish: float = 0.0
    healthz: float = 0.0

    @property
    def total(self) -> float:
        return self.claim + self.heartbeat + self.finish


def measure(running: Cluster, profile: Path | None) -> tuple[Phases, dict]:
    """One run of the DAG: the root alone, then each phase for all leaves at once, so the
    server's CPU (from /proc) splits by request kind. The root's finish queues the leaves."""
    assert running.server is not None and running.server.proc is not None
    pid = running.server.proc.pid
    redis = Redis.from_url(running.redis.url)
    sampler = None
    if profile:  # only the thread holding the GIL: the server's idle request threads drop out
        sampler = Sampler(profile, rate=200, options=("--gil",)).start({"server": pid})
    running.trigger("apicost")
    phases = Phases()
    with httpx.Client(base_url=f"{running.server.url}/api/v1") as api:
        worker = running.tokens["worker"]
        (root,) = take_jobs(redis, 1)
        as_try = claim(api, worker, root)
        heartbeat(api, root, as_try)
        before = cpu_seconds(pid)
        finish(api, root, as_try)
        queueing = cpu_seconds(pid) - before  # the root's finish queues every leaf
        leaves = take_jobs(redis, LEAVES)
        before = cpu_seconds(pid)
        creds = [claim(api, worker, p) for p in leaves]
        middle = cpu_seconds(pid)
        for p, c in zip(leaves, creds, strict=True):
            heartbeat(api, p, c)
        after_beats = cpu_seconds(pid)
        for p, c in zip(leaves, creds, strict=True):
            finish(api, p, c)
        end = cpu_seconds(pid)
        for _ in leaves:
            api.get("/healthz")
        phases.healthz = 1000 * (cpu_seconds(pid) - end) / LEAVES
    phases.claim = 1000 * (middle - before) / LEAVES
    phases.heartbeat = 1000 * (after_beats - middle) / LEAVES
    phases.finish = 1000 * (end - after_beats + queueing) / LEAVES
    stacks = {}
    if sampler is not None:
        stacks = {name: read_raw(path) for name, path in sampler.stop().items()}
    return phases, stacks


def main(argv: Sequence[str] = ()) -> list[Goal]:
    parser = argparse.ArgumentParser(prog="python -m bench.apicost")
    parser.add_argument("--profile", type=Path, help="sample the server with py-spy into DIR")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(list(argv))
    console = Console(width=120)
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="pinflow-bench-apicost-") as tmp,
        cluster(Path(tmp) / "home", workers=0) as running,
    ):
        running.schedulers[0].stop()  # the client queues nothing by itself: only the API
        publish(running, Path(tmp) / "repo", "dags/apicost.py", fanout_dag("apicost"))
        for i in range(args.rounds):
            keep = args.profile / f"round{i}" if args.profile and i == 0 else None
            if keep:
                keep.mkdir(parents=True, exist_ok=True)
            phases, stacks = measure(running, keep)
            results.append(phases)
            if stacks:
                console.print("server, top functions (inclusive samples):")
                for name, count in top_frames([s for v in stacks.values() for s in v], 45):
                    console.print(f"  {count:6}  {name}", markup=False, highlight=False)
    table = Table(title=f"API server CPU ms per task, {LEAVES} leaves (from /proc)")
    for column in ("round", "claim", "heartbeat", "finish (+ queueing)", "all three",
                   "GET /healthz (floor)"):  # fmt: skip
        table.add_column(column, justify="right")
    for i, p in enumerate(results, 1):
        table.add_row(str(i), *(f"{v:.2f}" for v in (p.claim, p.heartbeat, p.finish, p.total,
                                                        p.healthz)))  # fmt: skip
    console.print(table)
    totals = sorted(p.total for p in results)
    best, median = totals[0], totals[len(totals) // 2]
    return [
        Goal("API server CPU", "claim + heartbeat + finish per task, median of rounds",
             f"{median:.1f} ms", f"<= {GOAL_MS:g} ms", median <= GOAL_MS, before=BEFORE),
        Goal("API server CPU", "the same, best round", f"{best:.1f} ms", f"<= {GOAL_MS:g} ms",
             best <= GOAL_MS, before=BEFORE),
    ]  # fmt: skip


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
