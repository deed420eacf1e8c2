"""Scheduler scaling: 5,000 due DAGs on PostgreSQL, one scheduler against two.

Each round gets a fresh database (a throwaway PostgreSQL 15 cluster, as the tests start one),
5,000 DAGs that are each due exactly one run (`@daily`, no catchup), a private redis-server,
and 1 or 2 `pinflow scheduler` processes. The round ends when no DAG is due any more. Rate =
runs / (last run's `created_at` − first run's), both stamped by PostgreSQL, so process start-up
is not counted. Duplicates are (dag, logical date) pairs with more than one run, plus any
unique-key violation a scheduler logged (the key would hide a race as an error). Rounds
alternate 1, 2, 1, 2 so both see the same machine. Goals: all 5,000 runs created in ≤ 10 s by
2 schedulers (issue 17; ~37 s, 135 runs/s, when each DAG was its own transaction), 2 schedulers
≥ 1.7 × the runs/s of 1 (issue 8), and 0 duplicates.

Run: `.venv/bin/python -m bench.scale` (or `make bench`). Needs PostgreSQL's server binaries
(`apt-get install -y postgresql`); as root they run as the `postgres` user.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select, text

from bench._stats import Goal
from dagstore.core.db import Database
from dagstore.core.models import Dag
from pinflow.migrate import upgrade
from scheduler.models import DagRun
from tests.support.pg import PostgresCluster, create_database, find_pg_bin
from tests.support.procs import PinflowProcess
from tests.support.redis import RedisServer
from tests.support.seed import daily, insert_dags

DAGS = 5000
ROUNDS = 2
GOAL = 1.7  # issue 8: 2 schedulers against 1, runs/s
GOAL_SECONDS = 10.0  # issue 17: all runs of DAGS due at once, 2 schedulers
BEFORE_SECONDS = "~37 s (135 runs/s)"  # BENCHMARKS.md, one transaction per DAG
BEFORE_RATIO = "1.81x"


@dataclass
class Round:
    schedulers: int
    runs: int
    seconds: float
    duplicates: int
    logged_conflicts: int

    @property
    def rate(self) -> float:
        return self.runs / self.seconds if self.seconds else float("nan")


def seed(url: str) -> Database:
    db = Database(url)
    upgrade(db)
    start = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0)
    structure = {**daily(start), "catchup": False}
    insert_dags(db, "scale", {f"scale_{i:05}": structure for i in range(DAGS)})
    return db


def still_due(db: Database) -> int:
    with db.read() as session:
        query = (
            select(func.count())
            .select_from(Dag)
            .where((Dag.next_due_at.is_(None)) | (Dag.next_due_at <= func.now()))
        )
        return session.scalar(query) or 0


def one_round(
    cluster: PostgresCluster, admin_url: str, index: int, count: int, home: Path
) -> Round:
    url = create_database(admin_url, f"scale_{index}")
    db = seed(url)
    redis = RedisServer()
    redis.start()
    procs = [
        PinflowProcess(f"scheduler-{index}-{i}", ["scheduler", "--name", f"s{i}"], home, url,
                       PINFLOW_REDIS_URL=redis.url)
        for i in range(count)
    ]  # fmt: skip
    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + 600
        while still_due(db) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for proc in procs:
            proc.stop()
        redis.cleanup()
    logs = "".join(proc.log() for proc in procs)
    with db.read() as session:
        runs, first, last = session.execute(
            select(func.count(), func.min(DagRun.created_at), func.max(DagRun.created_at))
        ).one()
        duplicates = session.scalar(
            text(
                "SELECT count(*) FROM (SELECT dag_id, logical_date FROM dag_runs "
                "GROUP BY dag_id, logical_date HAVING count(*) > 1) AS d"
            )
        )
    db.dispose()
    conflicts = logs.count("UniqueViolation") + logs.count("duplicate key")
    return Round(count, runs, (last - first).total_seconds(), duplicates or 0, conflicts)


def main() -> list[Goal]:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise SystemExit("bench.scale needs PostgreSQL: apt-get install -y postgresql")
    cluster = PostgresCluster(bin_dir)
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="pinflow-bench-scale-") as tmp:
        cluster.start()
        try:
            admin_url = cluster.url("postgres")
            plan = [1, 2] * ROUNDS
            for index, count in enumerate(plan):
                rounds.append(one_round(cluster, admin_url, index, count, Path(tmp)))
        finally:
            cluster.stop()
    table = Table(title=f"{DAGS} due DAGs on PostgreSQL, created runs per second")
    for column in (
        "round",
        "schedulers",
        "runs",
        "seconds",
        "runs/s",
        "duplicates",
        "conflicts logged",
    ):
        table.add_column(column, justify="right")
    for i, r in enumerate(rounds, 1):
        table.add_row(str(i), str(r.schedulers), str(r.runs), f"{r.seconds:.1f}", f"{r.rate:.0f}",
                      str(r.duplicates), str(r.logged_conflicts))  # fmt: skip
    Console(width=120).print(table)
    one = statistics.median(r.rate for r in rounds if r.schedulers == 1)
    two = statistics.median(r.rate for r in rounds if r.schedulers == 2)
    two_seconds = statistics.median(r.seconds for r in rounds if r.schedulers == 2)
    complete = all(r.runs == DAGS for r in rounds)
    ratio = two / one
    dups = sum(r.duplicates + r.logged_conflicts for r in rounds)
    print(f"1 scheduler {one:.0f} runs/s, 2 schedulers {two:.0f} runs/s: {ratio:.2f}x; "
          f"duplicates {dups}")  # fmt: skip
    print(f"2 schedulers: {DAGS:,} runs in {two_seconds:.1f} s (median), goal <= "
          f"{GOAL_SECONDS:g} s; before {BEFORE_SECONDS}")  # fmt: skip
    return [
        Goal("scheduler scaling", f"{DAGS:,} due DAGs, 2 schedulers: all runs created",
             f"{two_seconds:.1f} s ({two:.0f} runs/s)", f"<= {GOAL_SECONDS:g} s",
             complete and two_seconds <= GOAL_SECONDS, before=BEFORE_SECONDS),
        Goal("scheduler scaling", "2 / 1 schedulers, runs created per second", f"{ratio:.2f}x",
             f">= {GOAL:g}x", ratio >= GOAL, before=BEFORE_RATIO),
        Goal("scheduler scaling", "duplicate runs", str(dups), "0", dups == 0, before="0"),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
