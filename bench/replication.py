"""What synchronous replication costs a commit (issue 26).

With `synchronous_standby_names` the primary answers a commit only once the standby has the
transaction: nothing acknowledged is lost when the primary dies, at the price of a round trip
to the standby and its WAL flush per commit. Every state change in pinflow is one commit
(claim, heartbeat, finish, queueing the next tasks), so this is the latency each of them
gains. Measured: 1,000 one-row INSERT commits through pinflow's own `Database` (its pool,
timeouts and hooks), on one PostgreSQL and on a primary with a synchronous standby, both with
fsync on, on this machine (loopback; a standby on another host adds the network round trip).
The throughput benchmark's `--database postgresql|replicated` gives the end-to-end cost.

Run: `.venv/bin/python -m bench replication`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from bench._stats import Goal
from dagstore.core.db import Database
from tests.support.pg_ha import ReplicatedPostgres

COMMITS = 1000
ROUNDS = 2  # alternated, so a burst of load on a shared machine hits both setups alike


def commit_latencies(replicated: bool) -> list[float]:
    pg = ReplicatedPostgres(replicated=replicated, durable=True).start()
    try:
        db = Database(pg.create_database("bench"))
        try:
            with db.write() as session:
                session.execute(text("CREATE TABLE t (i int)"))
            seconds = []
            for i in range(COMMITS):
                started = time.perf_counter()
                with db.write() as session:
                    session.execute(text("INSERT INTO t VALUES (:i)"), {"i": i})
                seconds.append(time.perf_counter() - started)
            return sorted(seconds)
        finally:
            db.dispose()
    finally:
        pg.stop()


def main(argv: Sequence[str] = ()) -> list[Goal]:
    console = Console(width=120)
    figures = Table(title=f"{COMMITS} one-row commits, fsync on")
    for column in ("PostgreSQL", "round", "p50 ms", "p90 ms", "p99 ms", "commits/s"):
        figures.add_column(column, justify="left" if column == "PostgreSQL" else "right")
    for round_no in range(1, ROUNDS + 1):
        for replicated in (False, True):
            s = commit_latencies(replicated)
            name = "primary + synchronous standby" if replicated else "one server"
            figures.add_row(name, str(round_no), *(f"{1000 * s[int(len(s) * q)]:.2f}"
                            for q in (0.5, 0.9, 0.99)), f"{len(s) / sum(s):.0f}")  # fmt: skip
    console.print(figures)
    return []


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
