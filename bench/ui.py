"""Web UI render time: the DAG list with 500 DAGs, and a DAG's grid of 25 runs × 50 tasks.

A real `pinflow server` (SQLite); 500 DAG files pushed in one commit, one of them a 50-task
chain with 25 manual runs (no worker: the runs stay queued, which the grid renders the same).
Each page is fetched 20 times with a session cookie, after one warm-up; the time is the
request's wall time on loopback, which bounds the server's time from above.

Run: `.venv/bin/python -m bench.ui` (or `make bench`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx

from bench._stats import Goal, Measure, ms
from tests.support.git import Git
from tests.support.server import start_server

DAGS = 500
TASKS = 50
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


def main() -> list[Goal]:
    with tempfile.TemporaryDirectory(prefix="pinflow-bench-ui-") as tmp:
        server = start_server(Path(tmp) / "home")
        try:
            server.create_repo("uibench")
            work = Git(Path(tmp) / "work").init()
            work.write("dags/big.py", chain("big", TASKS))
            for i in range(DAGS - 1):
                work.write(f"dags/d{i:03}.py", chain(f"d{i:03}", 2))
            work.commit("500 DAGs")
            work.run("push", server.git_url("uibench", server.tokens["push"]), "main")
            with server.api("trigger") as api:
                for _ in range(RUNS):
                    assert api.post("/dags/big/runs", json={}).status_code == 201
            with httpx.Client(base_url=server.url, timeout=60) as web:
                login = web.post("/login", data={"token": server.tokens["read"], "next": "/"})
                assert login.status_code == 303, login.text
                results = [time_page(web, "/", f"DAG list, {DAGS} DAGs")]
                results.append(time_page(web, "/dags/big", f"grid, {RUNS} runs × {TASKS} tasks"))
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
