"""Web UI render time: the DAG list with 500 DAGs, and the pages of a 200-task DAG with 25
finished runs: its DAG page (drawn graph, grid, durations), a run page (Gantt of 200+ tries)
and the runs list.

A real `pinflow server` (SQLite); 500 DAG files pushed in one commit, one of them a 200-task
DAG in 10 layers of 20 (each task after 1-3 of the layer before; a few long edges). Its 25
manual runs are made through the API; no worker runs 5,000 tasks here, so each run's
instances are then finished in the database as the scheduler would leave them (a try each,
with queued/started/ended times; a few tasks retried once, their first try failed). Each page
is fetched 20 times with a session cookie after one warm-up (which also lays the graph out
once per process); the time is the request's wall time on loopback, which bounds the
server's time from above.

Run: `.venv/bin/python -m bench.ui` (or `make bench`).
"""

from __future__ import annotations

import random
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import select

from bench._stats import Goal, Measure, ms
from dagstore.core.db import Database
from scheduler.models import DagRun, TaskInstance, TaskTry
from tests.support.git import Git
from tests.support.server import start_server

DAGS = 500
TASKS, WIDTH = 200, 20
RUNS = 25
REPS = 20
GOAL_MS = 150.0


def chain(dag_id: str, tasks: int) -> str:
    lines = [
        "from pinflow import DAG, task",
        "",
        f'with DAG("{dag_id}", schedule="@daily", start_date="2026-01-01"):',
    ]
    for t in range(tasks):
        lines += ["    @task", f"    def t{t}(x=0):", "        return x", ""]
    lines += ["    out = t0()"] + [f"    out = t{t}(out)" for t in range(1, tasks)]
    return "\n".join(lines) + "\n"


def layered(dag_id: str, tasks: int = TASKS, width: int = WIDTH) -> str:
    """Layers of `width` tasks, each after 1-3 tasks of the layer before, a tenth also after
    one further back: a wide DAG with crossings and long edges, as real ones have."""
    rng = random.Random(30)
    lines = [
        "from pinflow import DAG, task",
        "",
        f'with DAG("{dag_id}", schedule=None):',
        "    @task",
        "    def step(*xs):",
        "        return 0",
        "",
    ]
    for i in range(tasks):
        layer = i // width
        ups: set[int] = set()
        if layer:
            ups |= {rng.randrange((layer - 1) * width, layer * width) for _ in range(3)}
            if layer > 1 and rng.random() < 0.1:
                ups.add(rng.randrange(0, (layer - 1) * width))
        args = ", ".join(f"t{u}" for u in sorted(ups))
        lines.append(f'    t{i} = step.override(task_id="t{i}")({args})')
    return "\n".join(lines) + "\n"


def finish_runs(database_url: str, dag_id: str) -> None:
    """Every instance of the DAG's runs ended as a worker would have left it."""
    rng = random.Random(25)
    db = Database(database_url)
    with db.write() as session:
        runs = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id)).all()
        for run in runs:
            begin = run.created_at
            run.state, run.started_at = "success", begin
            moment = begin
            instances = session.scalars(
                select(TaskInstance).where(TaskInstance.run_pk == run.id)
            ).all()
            for ti in instances:
                tries = 2 if rng.random() < 0.03 else 1
                for number in range(1, tries + 1):
                    queued = moment
                    started = queued + timedelta(milliseconds=rng.randint(5, 80))
                    ended = started + timedelta(milliseconds=rng.randint(50, 4000))
                    moment = ended
                    failed = number < tries
                    session.add(
                        TaskTry(
                            ti_id=ti.id,
                            try_number=number,
                            state="failed" if failed else "success",
                            worker="bench",
                            queued_at=queued,
                            started_at=started,
                            ended_at=ended,
                            error="RuntimeError: first try" if failed else None,
                            sha=run.sha,
                        )
                    )
                ti.state, ti.try_number = "success", tries
                ti.queued_at, ti.started_at, ti.ended_at = queued, started, ended
            run.ended_at = moment
    db.dispose()


def main() -> list[Goal]:
    with tempfile.TemporaryDirectory(prefix="pinflow-bench-ui-") as tmp:
        server = start_server(Path(tmp) / "home")
        try:
            server.create_repo("uibench")
            work = Git(Path(tmp) / "work").init()
            work.write("dags/big.py", layered("big"))
            for i in range(DAGS - 1):
                work.write(f"dags/d{i:03}.py", chain(f"d{i:03}", 2))
            work.commit("500 DAGs")
            work.run("push", server.git_url("uibench", server.tokens["push"]), "main")
            with server.api("trigger") as api:
                made = [api.post("/dags/big/runs", json={}) for _ in range(RUNS)]
            assert all(r.status_code == 201 for r in made), made[-1].text
            finish_runs(server.database_url, "big")
            run_id = made[-1].json()["run_id"]
            with httpx.Client(base_url=server.url, timeout=60) as web:
                login = web.post("/login", data={"token": server.tokens["read"], "next": "/"})
                assert login.status_code == 303, login.text
                results = [
                    time_page(web, "/", f"DAG list, {DAGS} DAGs"),
                    time_page(web, "/dags/big", f"DAG page, {TASKS} tasks × {RUNS} runs"),
                    time_page(web, f"/runs/{run_id}", f"run page, Gantt of {TASKS}+ tries"),
                    time_page(web, "/runs", "runs list"),
                ]
        finally:
            server.stop()
    goals = []
    for m in results:
        met = m.median * 1000 <= GOAL_MS
        print(f"{m.name}: median {ms(m.median)} ms, p90 {ms(m.p90)} ms; goal <= {GOAL_MS:g} ms")
        goals.append(Goal("web UI", m.name, f"{ms(m.median)} ms", f"<= {GOAL_MS:g} ms", met))
    return goals


def time_page(web: httpx.Client, path: str, name: str) -> Measure:
    first = web.get(path)
    assert first.status_code == 200, first.text[:500]
    m = Measure(name)
    for _ in range(REPS):
        started = time.perf_counter()
        response = web.get(path)
        m.samples.append(time.perf_counter() - started)
        assert response.status_code == 200
    return m


if __name__ == "__main__":
    main()
