"""Every query of the pages, the listings, /metrics and the scheduler reads through an index
with a year of history in the database (issue 33): each statement they run is captured and
EXPLAINed, and none may read a whole history table (a Seq Scan in PostgreSQL, a SCAN without
an index in SQLite). On PostgreSQL each is also run (EXPLAIN ANALYZE, rolled back) and may
read at most READ_BOUND rows of the history tables, those it filters out included: an index
scan in the wrong order (the primary key backwards, dropping other DAGs' runs) is caught too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import event, select

from dagstore.core.db import Database, db_time
from dagstore.core.logtail import DEFAULT_CAP
from pinflow.metrics import SystemCollector
from scheduler.api import get_logs, get_runs
from scheduler.loop import Scheduler, SchedulerConfig
from scheduler.models import DagRun, TaskInstance
from scheduler.tries import TryLog, finish
from scheduler.views import get_run, recent_runs, run_grid, tasks_json
from tests.support.history import HistorySpec, load_history
from tests.support.seed import daily, insert_dags, running_run

HISTORY_TABLES = ("dag_runs", "task_instances", "task_tries")
# The most rows of the history tables one statement may read: pages show at most 250 runs
# (5 for each of 50 DAGs) or a grid of 25 runs of 5 tasks; the history has 6,000 runs.
READ_BOUND = 1000
DAGS = [f"h{i}" for i in range(10)]


@contextmanager
def captured(db: Database) -> Iterator[list[tuple[str, Any]]]:
    """The statements (and their parameters) `db` runs meanwhile."""
    seen: list[tuple[str, Any]] = []

    def before(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        verb = statement.lstrip().split(None, 1)[0].upper()
        if not executemany and verb in ("SELECT", "UPDATE", "DELETE", "WITH"):
            seen.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", before)


def full_reads(db: Database, statement: str, parameters: Any) -> list[str]:
    """The lines of the statement's plan that read a whole history table."""
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        if db.is_sqlite:
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            lines = [str(row[-1]) for row in cursor.fetchall()]
            if _walks_newest_first(statement, lines):
                lines = []
            bad = re.compile(rf"^SCAN ({'|'.join(HISTORY_TABLES)})( AS \w+)?$")
        else:
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
            plan = cursor.fetchone()[0][0]["Plan"]
            read = _rows_read(plan)
            lines = [_describe(node) for node in _nodes(plan)]
            if read > READ_BOUND:
                lines.append(f"Read {read} rows of the history tables")
            bad = re.compile(rf"Seq Scan on ({'|'.join(HISTORY_TABLES)})\b|^Read \d+ rows")
        cursor.close()
        raw.rollback()
    finally:
        raw.close()
    return [line for line in lines if bad.search(line.strip())]


def _nodes(plan: dict) -> Iterator[dict]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _rows_read(plan: dict) -> int:
    """Rows the scans of history tables produced or filtered out, over all their loops."""
    return sum(
        int(
            (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0))
            * node.get("Actual Loops", 1)
        )
        for node in _nodes(plan)
        if node.get("Relation Name") in HISTORY_TABLES
    )


def _describe(node: dict) -> str:
    where = f" on {node['Relation Name']}" if "Relation Name" in node else ""
    index = f" using {node['Index Name']}" if "Index Name" in node else ""
    return f"{node['Node Type']}{where}{index}"


def _walks_newest_first(statement: str, lines: list[str]) -> bool:
    """SQLite's plan for an unfiltered `ORDER BY id DESC LIMIT n` is a SCAN in rowid order that
    stops after n rows: no full read, though the plan says SCAN."""
    return (
        "WHERE" not in statement
        and "LIMIT" in statement
        and not any("TEMP B-TREE" in line for line in lines)
    )


@pytest.fixture
def big(db: Database) -> Database:
    now = datetime.now(UTC)
    insert_dags(db, "h", {d: daily(now - timedelta(days=1)) for d in DAGS})
    insert_dags(db, "empty", {"no_runs": daily(now - timedelta(days=1))})
    load_history(db, DAGS, HistorySpec(task_instances=30_000, days=90))
    return db


def _workload(db: Database) -> list[Callable[[], Any]]:
    """What a user and the scheduler do: pages, listings, a scrape, a log, a new run."""
    store = SimpleNamespace(db=db, settings=SimpleNamespace(task_log_max_bytes=DEFAULT_CAP))
    with db.read() as session:
        some_run = session.scalar(select(DagRun.run_id).where(DagRun.dag_id == "h3").limit(1))
    collector = SystemCollector()
    collector.store = store  # type: ignore[assignment]

    def pages() -> None:
        with db.read() as session:
            recent_runs(session, [*DAGS, "no_runs"], per_dag=5)
            run_grid(session, "h3", 25)
            run = get_run(session, str(some_run))
            tasks_json(session, run)

    def listings() -> None:
        for dag_id, state in ((None, None), ("h1", None), (None, "failed"), ("h2", "success"),
                              (None, "running"), ("h2", "queued")):  # fmt: skip
            get_runs(store, None, dag_id=dag_id, state=state, limit=100)  # type: ignore[arg-type]
        get_logs(str(some_run), "t2", store, None)  # type: ignore[arg-type]

    def scrape() -> None:
        list(collector.collect())

    def new_run() -> None:
        run_pk = running_run(db, {"a": [], "b": ["a"]})
        with db.write() as session:
            ti = session.scalar(
                select(TaskInstance).where(
                    TaskInstance.run_pk == run_pk, TaskInstance.task_id == "a"
                )
            )
            assert ti is not None
            finish(session, ti.id, ti.try_number, True, db_time(session), log=TryLog("ok\n"))

    def scheduler() -> None:
        loop = Scheduler(db, None, SchedulerConfig(name="plans"))
        loop.tick()
        loop.recover()

    return [pages, listings, scrape, new_run, scheduler]


def test_no_query_reads_the_whole_history(big: Database) -> None:
    offenders: dict[str, list[str]] = {}
    for step in _workload(big):
        with captured(big) as statements:
            step()
        assert statements, step.__name__
        for statement, parameters in statements:
            bad = full_reads(big, statement, parameters)
            if bad:
                offenders[f"{step.__name__}: {statement}"] = bad
    assert not offenders, "\n\n".join(f"{k}\n  {v}" for k, v in offenders.items())


def test_recent_runs_is_each_dags_newest(big: Database) -> None:
    """The per-DAG query answers what the window did: each DAG's newest runs, newest first,
    an empty list for a DAG without runs, fewer for a DAG with fewer."""
    insert_dags(big, "one", {"one_run": daily(datetime.now(UTC))})
    with big.write() as session:
        run = session.get(DagRun, 1)
        assert run is not None
        run.dag_id = "one_run"
    with big.read() as session:
        got = recent_runs(session, ["h0", "h9", "no_runs", "one_run", "nope"], per_dag=5)
        for dag_id in ("h0", "h9"):
            newest = list(
                session.scalars(
                    select(DagRun.run_id)
                    .where(DagRun.dag_id == dag_id)
                    .order_by(DagRun.id.desc())
                    .limit(5)
                )
            )
            assert [r["run_id"] for r in got[dag_id]] == newest
    assert got["no_runs"] == [] and got["nope"] == [] and len(got["one_run"]) == 1
