"""Months of finished runs in seconds: runs, their task instances, tries and logs written
straight into the tables, for the history benchmark (`bench/history.py`) and the tests that
need a big database (query plans, `pinflow db clean`).

PostgreSQL gets COPY, SQLite executemany in big transactions: one million task instances
with their tries and logs load in about a minute either way. Rows look like the scheduler's:
runs of DAGs that exist (their repo, sha and file), one per schedule tick spread evenly over
`days`, tasks in a chain; every `failed_every`-th run failed at its third task (the ones
after it `upstream_failed`, without a try), every `retried_every`-th task needed two tries.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text

from dagstore.core.db import Database
from dagstore.core.models import Dag
from scheduler.models import DagRun, TaskInstance, TaskTry

RUN_COLUMNS = ("id", "run_id", "dag_id", "repo_id", "sha", "fileloc", "logical_date",
               "scheduled_key", "run_type", "created_by", "state", "conf", "created_at",
               "started_at", "ended_at", "held")  # fmt: skip
TI_COLUMNS = ("id", "run_pk", "task_id", "upstream", "state", "try_number", "max_tries",
              "retries", "retry_delay", "queue", "queued_at", "started_at", "ended_at",
              "heartbeat_at", "worker", "result", "error")  # fmt: skip
TRY_COLUMNS = ("id", "ti_id", "try_number", "state", "worker", "started_at", "ended_at",
               "error", "log", "log_tail", "log_bytes", "sha")  # fmt: skip
CHUNK_RUNS = 20_000  # runs per transaction (and their tasks and tries)
TRACEBACK = 'Traceback (most recent call last):\n  File "dags/d.py", line 9\nValueError: bad row\n'


@dataclass(frozen=True)
class HistorySpec:
    task_instances: int = 1_000_000
    tasks_per_run: int = 5
    days: float = 90.0
    log_bytes: int = 400  # per try
    failed_every: int = 50
    retried_every: int = 20
    newest_days_ago: float = 0.0  # the newest loaded run's tick, this long before now

    @property
    def runs(self) -> int:
        return max(self.task_instances // self.tasks_per_run, 1)


@dataclass
class Loaded:
    runs: int = 0
    task_instances: int = 0
    tries: int = 0
    log_bytes: int = 0
    seconds: float = 0.0
    first_run_pk: int = 0
    last_run_pk: int = 0


@dataclass(frozen=True)
class DagRow:
    dag_id: str
    repo_id: int
    sha: str
    fileloc: str


def load_history(db: Database, dag_ids: list[str], spec: HistorySpec) -> Loaded:
    """Finished runs of `dag_ids` (DAGs the store knows), oldest first, ending
    `spec.newest_days_ago` before now; then (PostgreSQL) ANALYZE, so plans see the sizes."""
    started = time.perf_counter()
    with db.read() as session:
        dags = [
            DagRow(dag_id, repo_id, sha or "0" * 40, fileloc)
            for dag_id, repo_id, sha, fileloc in session.execute(
                select(Dag.dag_id, Dag.repo_id, Dag.current_sha, Dag.fileloc)
                .where(Dag.dag_id.in_(dag_ids))
                .order_by(Dag.dag_id)
            )
        ]
        next_ids = [
            (session.scalar(select(func.max(table.id))) or 0) + 1
            for table in (DagRun, TaskInstance, TaskTry)
        ]
    assert dags, f"none of the DAGs {dag_ids[:3]}... exists"
    writer = _PgWriter(db) if not db.is_sqlite else _SqliteWriter(db)
    loaded = Loaded(first_run_pk=next_ids[0])
    rows = _Rows(spec, dags, next_ids, writer.stamp)
    for first in range(0, spec.runs, CHUNK_RUNS):
        runs, tis, tries = rows.chunk(first, min(first + CHUNK_RUNS, spec.runs))
        writer.write(runs, tis, tries)
        loaded.runs += len(runs)
        loaded.task_instances += len(tis)
        loaded.tries += len(tries)
    loaded.log_bytes = rows.log_bytes
    loaded.last_run_pk = next_ids[0] + loaded.runs - 1
    writer.finish()
    loaded.seconds = time.perf_counter() - started
    return loaded


class _Rows:
    """The rows of runs [first, end) of the spec, as tuples in the column orders above."""

    def __init__(self, spec: HistorySpec, dags: list[DagRow], next_ids: list[int],
                 stamp: Callable[[datetime], Any]) -> None:  # fmt: skip
        self.spec, self.dags, self.stamp = spec, dags, stamp
        self.run_pk, self.ti_pk, self.try_pk = next_ids
        now = datetime.now(UTC).replace(microsecond=0)
        self.newest = now - timedelta(days=spec.newest_days_ago, hours=1)
        self.step = timedelta(days=spec.days) / max(spec.runs, 1)
        self.log_bytes = 0
        line = "2026-01-01 00:00:00 INFO etl: processed a batch of rows, all well\n"
        self.log = (line * (spec.log_bytes // len(line) + 1))[: spec.log_bytes]
        self.tasks = [f"t{i}" for i in range(spec.tasks_per_run)]

    def chunk(self, first: int, end: int) -> tuple[list[tuple], list[tuple], list[tuple]]:
        runs, tis, tries = [], [], []
        spec, stamp = self.spec, self.stamp
        for n in range(first, end):
            dag = self.dags[n % len(self.dags)]
            tick = self.newest - self.step * (spec.runs - 1 - n)
            failed = spec.failed_every and n % spec.failed_every == spec.failed_every - 1
            run_pk = self.run_pk + n
            start, end_at = tick + timedelta(seconds=2), tick + timedelta(seconds=30)
            runs.append((
                run_pk, f"{dag.dag_id}__scheduled__{tick:%Y-%m-%dT%H:%M:%S}", dag.dag_id,
                dag.repo_id, dag.sha, dag.fileloc, stamp(tick), tick.isoformat(), "scheduled",
                "scheduler:history", "failed" if failed else "success", "{}", stamp(tick),
                stamp(start), stamp(end_at), False,
            ))  # fmt: skip
            for t, task_id in enumerate(self.tasks):
                ti_pk = self.ti_pk + n * len(self.tasks) + t
                state = "success"
                if failed and t >= 2:
                    state = "failed" if t == 2 else "upstream_failed"
                two = spec.retried_every and ti_pk % spec.retried_every == 0 and state == "success"
                number = 0 if state == "upstream_failed" else 2 if two else 1
                at = start + timedelta(seconds=t * 5)
                error = "ValueError: bad row" if state == "failed" else None
                tis.append((
                    ti_pk, run_pk, task_id, json.dumps(self.tasks[t - 1 : t]), state, number,
                    2 if two else 1, 1 if two else 0, 0.0, "default", stamp(at), stamp(at),
                    stamp(at + timedelta(seconds=4)), stamp(at), "w1", "null", error,
                ))  # fmt: skip
                for k in range(1, number + 1):
                    ok = state == "success" and k == number
                    log = self.log if ok else self.log + TRACEBACK
                    self.log_bytes += len(log)
                    tries.append((
                        self.try_pk, ti_pk, k, "success" if ok else "failed", "w1", stamp(at),
                        stamp(at + timedelta(seconds=4)), None if ok else "ValueError: bad row",
                        log, "", len(log), dag.sha,
                    ))  # fmt: skip
                    self.try_pk += 1
        return runs, tis, tries


class _PgWriter:
    """COPY into each table; the id sequences moved past the rows at the end."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def stamp(value: datetime) -> datetime:
        return value

    def write(self, runs: list[tuple], tis: list[tuple], tries: list[tuple]) -> None:
        raw = self.db.engine.raw_connection()
        try:
            with raw.cursor() as cursor:  # type: ignore[attr-defined]
                for table, columns, rows in (("dag_runs", RUN_COLUMNS, runs),
                                             ("task_instances", TI_COLUMNS, tis),
                                             ("task_tries", TRY_COLUMNS, tries)):  # fmt: skip
                    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
            raw.commit()
        finally:
            raw.close()

    def finish(self) -> None:
        with self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SET statement_timeout = 0"))
            for table in ("dag_runs", "task_instances", "task_tries"):
                conn.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                ))  # fmt: skip
                conn.execute(text(f"VACUUM ANALYZE {table}"))


class _SqliteWriter:
    """executemany in one transaction per chunk, on a connection of its own."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def stamp(value: datetime) -> str:
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")  # as SQLAlchemy stores DateTime

    def write(self, runs: list[tuple], tis: list[tuple], tries: list[tuple]) -> None:
        raw = self.db.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            for table, columns, rows in (("dag_runs", RUN_COLUMNS, runs),
                                         ("task_instances", TI_COLUMNS, tis),
                                         ("task_tries", TRY_COLUMNS, tries)):  # fmt: skip
                marks = ", ".join("?" * len(columns))
                cursor.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows
                )
            cursor.execute("COMMIT")
        finally:
            raw.close()

    def finish(self) -> None:
        """No ANALYZE: pinflow never runs it on SQLite, so its planner works without statistics
        there (with them, lacking STAT4 histograms, it takes a state that no row is in for a
        tenth of the table and may scan instead: tests/scheduler/test_history_plans.py). The
        write-ahead log is folded into the file, as SQLite's own checkpoints do over time."""
        raw = self.db.engine.raw_connection()  # outside a transaction: no BEGIN first
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            raw.close()
