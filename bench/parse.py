"""Push to schedulable: 100 DAG files (10 tasks each) pushed → all visible as current, with
the parse sandbox (bubblewrap, the default) and without it (PINFLOW_PARSE_SANDBOX=off).

The store parses a pushed branch tip inside the push (the author sees the result as `remote:`
lines), so "push" below includes parsing; "push return → visible" is what is left after it.
Each round pushes a new commit that changes every DAG file, so every round re-parses all 100.

Run: `.venv/bin/python -m bench.parse` (or `make bench`); `.venv/bin/python -m bench.parse
--process-only [REPS]` for the parse process alone (1 and 100 files, boxed and not).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from bench._stats import Goal, Measure, ms
from tests.support.git import Git
from tests.support.server import start_server

DAG_FILES = 100
TASKS = 10
ROUNDS = 5
GOAL_SECONDS = 1.0


def dag_file(index: int, round_no: int) -> str:
    """A TaskFlow DAG of TASKS tasks: a chain with a fan-in at the end, and a sibling import."""
    lines = [
        f"# round {round_no}",
        "from pinflow import DAG, task",
        "from shared import scale",
        "",
        f'with DAG("bench_{index:03}", schedule="@hourly", start_date="2026-01-01"):',
    ]
    for t in range(TASKS):
        lines += ["    @task", f"    def step_{t}(x=0):", f"        return scale(x) + {t}", ""]
    calls = ["    out_0 = step_0()"] + [
        f"    out_{t} = step_{t}(out_{t - 1})" for t in range(1, TASKS)
    ]
    return "\n".join(lines + calls) + "\n"


def visible(client: httpx.Client, sha: str) -> bool:
    dags = client.get("/dags").json()["items"]
    current = [d for d in dags if d["dag_id"].startswith("bench_") and d["current_sha"] == sha]
    return len(current) == DAG_FILES


def main(argv: list[str] | None = None) -> list[Goal]:
    """`--process-only [REPS]`: only the parse process measures (quick; run it at two commits
    to compare them: it touches nothing but `dagstore.parsing.parser`)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--process-only"]:
        parse_process(int(args[1]) if len(args) > 1 else 20)
        return []
    goals = []
    for sandbox in ("on", "off"):
        goals += measure(sandbox)
    parse_process()
    return goals


def parse_process(reps: int = 20) -> None:
    """What one parse process costs, boxed and not: one small DAG file, and the 100 files of
    a push (no server, no git: `parse_version` of an unpacked version, as a push runs it)."""
    from dagstore.parsing.parser import ParseLimits, parse_version
    from dagstore.parsing.sandbox import SandboxProbe

    boxed = SandboxProbe("on").sandbox
    timings = {}
    with tempfile.TemporaryDirectory(prefix="pinflow-bench-parse1-") as tmp:
        Path(tmp).chmod(0o755)
        for files in (1, DAG_FILES):
            root = Path(tmp) / f"version-{files}"
            (root / "dags").mkdir(parents=True)
            (root / "dags/shared.py").write_text("def scale(x):\n    return 2 * x\n")
            for i in range(files):
                (root / f"dags/bench_{i:03}.py").write_text(dag_file(i, 0))
            for name, limits in (
                ("sandbox on", ParseLimits(sandbox=boxed)),
                ("sandbox off", ParseLimits()),
            ):
                samples = []
                for _ in range(reps):
                    started = time.perf_counter()
                    result = parse_version(root, "a" * 40, limits)
                    samples.append(time.perf_counter() - started)
                    assert len(result.dag_ids) == files and not result.errors, result.errors
                label = "one DAG file" if files == 1 else f"{files} DAG files"
                timings[files, name] = Measure(f"parse of {label}, {name}", samples)
    for m in timings.values():
        print(
            f"{m.name}: median {ms(m.median)} ms, p90 {ms(m.p90)} ms, "
            f"min {ms(min(m.samples))} ms ({reps} parses)"
        )
    cost = timings[1, "sandbox on"].median - timings[1, "sandbox off"].median
    print(f"the sandbox costs {cost * 1000:.1f} ms per parse process (medians, one file)")


def measure(sandbox: str) -> list[Goal]:
    with tempfile.TemporaryDirectory(prefix="pinflow-bench-parse-") as tmp:
        server = start_server(Path(tmp) / "home", PINFLOW_PARSE_SANDBOX=sandbox)
        try:
            server.create_repo("parsebench")
            remote = server.git_url("parsebench", server.tokens["push"])
            work = Git(Path(tmp) / "work").init()
            work.write("dags/shared.py", "def scale(x):\n    return 2 * x\n")
            pushes, after = Measure("git push (incl. parse)"), Measure("push return → visible")
            client = httpx.Client(
                base_url=f"{server.url}/api/v1",
                headers={"Authorization": f"Bearer {server.tokens['read']}"},
            )
            for round_no in range(ROUNDS):
                for i in range(DAG_FILES):
                    work.write(f"dags/bench_{i:03}.py", dag_file(i, round_no))
                sha = work.commit(f"round {round_no}")
                started = time.perf_counter()
                result = work.run("push", remote, "main")
                returned = time.perf_counter()
                while not visible(client, sha):
                    time.sleep(0.005)
                done = time.perf_counter()
                assert f"parsed at {sha[:7]}" in result.stderr, result.stderr
                pushes.samples.append(returned - started)
                after.samples.append(done - returned)
            client.close()
        finally:
            server.stop()
    table = Table(
        title=f"push of {DAG_FILES} DAG files ({TASKS} tasks each) → schedulable, "
        f"{ROUNDS} rounds, parse sandbox {sandbox}"
    )
    for column in ("operation", "median ms", "p90 ms", "min ms", "max ms"):
        table.add_column(column, justify="right")
    total = Measure(
        "push + visible", [a + b for a, b in zip(pushes.samples, after.samples, strict=True)]
    )
    for m in (pushes, after, total):
        table.add_row(m.name, ms(m.median), ms(m.p90), ms(min(m.samples)), ms(max(m.samples)))
    Console().print(table)
    verdict = "met" if total.median <= GOAL_SECONDS else "not met"
    print(
        f"push → visible as current: median {total.median:.2f} s; "
        f"goal <= {GOAL_SECONDS:g} s: {verdict}"
    )
    return [
        Goal(
            "push to schedulable",
            f"{DAG_FILES} DAG files pushed → current (median), sandbox {sandbox}",
            f"{total.median:.2f} s",
            f"<= {GOAL_SECONDS:g} s",
            total.median <= GOAL_SECONDS,
        )
    ]


if __name__ == "__main__":
    main()
