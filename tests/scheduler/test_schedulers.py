"""Several scheduler processes on one database: exactly the expected runs, none twice,
and a killed scheduler's DAGs are taken over once its leases expire."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from dagstore.core.db import Database, as_utc
from dagstore.core.models import Dag
from pinflow.migrate import upgrade
from scheduler.models import DagRun
from tests.support.procs import PinflowProcess
from tests.support.seed import daily, insert_dags

DAGS = 200
DAYS_BEHIND = 3


def seed(database_url: str) -> tuple[Database, int]:
    """200 daily DAGs with catchup, started DAYS_BEHIND days ago: each owes the same runs."""
    db = Database(database_url)
    upgrade(db)
    start = (datetime.now(UTC) - timedelta(days=DAYS_BEHIND)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    insert_dags(db, "seeded", {f"d{i:03}": daily(start) for i in range(DAGS)})
    expected = DAYS_BEHIND + 1  # every midnight from start to today's
    return db, expected


def schedulers(
    n: int, tmp_path: Path, database_url: str, redis_url: str, ttl: str
) -> list[PinflowProcess]:
    return [
        PinflowProcess(
            f"scheduler-{i}",
            ["scheduler", "--name", f"s{i}"],
            tmp_path,
            database_url,
            PINFLOW_REDIS_URL=redis_url,
            PINFLOW_LEASE_TTL=ttl,
        ).start()
        for i in range(n)
    ]


def wait_for_runs(db: Database, total: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with db.read() as session:
            count = session.scalar(select(func.count()).select_from(DagRun))
            behind = session.scalar(
                select(func.count())
                .select_from(Dag)
                .where((Dag.next_due_at.is_(None)) | (Dag.next_due_at <= datetime.now(UTC)))
            )
        if count == total and behind == 0:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"only {count} of {total} runs after {timeout} s")


def assert_exact(db: Database, per_dag: int) -> None:
    with db.read() as session:
        rows = session.execute(select(DagRun.dag_id, DagRun.logical_date, DagRun.sha)).all()
        creators = dict(
            session.execute(
                select(DagRun.created_by, func.count()).group_by(DagRun.created_by)
            ).all()
        )
    keys = [(dag_id, as_utc(date)) for dag_id, date, _ in rows]
    assert len(keys) == len(set(keys)) == DAGS * per_dag, "duplicate or missing runs"
    by_dag: dict[str, int] = {}
    for dag_id, _ in keys:
        by_dag[dag_id] = by_dag.get(dag_id, 0) + 1
    assert set(by_dag.values()) == {per_dag}
    assert {sha for *_, sha in rows} == {"a" * 40}
    print(f"runs per scheduler: {creators}")


def test_three_schedulers_create_exactly_the_expected_runs(database_url, redis_url, tmp_path):
    db, per_dag = seed(database_url)
    procs = schedulers(3, tmp_path, database_url, redis_url, ttl="30")
    try:
        took = wait_for_runs(db, DAGS * per_dag, timeout=120)
        print(f"{DAGS * per_dag} runs by 3 schedulers in {took:.1f} s")
        time.sleep(1)  # a late duplicate would show up now
        assert_exact(db, per_dag)
    finally:
        for p in procs:
            p.stop()
        db.dispose()
    for p in procs:
        assert "Traceback" not in p.log(), p.log()[-2000:]


def test_killed_scheduler_is_taken_over_after_its_lease(database_url, redis_url, tmp_path):
    db, per_dag = seed(database_url)
    ttl = 2.0
    procs = schedulers(2, tmp_path, database_url, redis_url, ttl=str(ttl))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill it mid-loop: once it has created some runs
            with db.read() as session:
                mine = session.scalar(
                    select(func.count())
                    .select_from(DagRun)
                    .where(DagRun.created_by == "scheduler:s0")
                )
            if mine:
                break
            time.sleep(0.01)
        time.sleep(random.uniform(0, 0.2))
        procs[0].kill9()
        killed_at = time.monotonic()
        took = wait_for_runs(db, DAGS * per_dag, timeout=120)
        print(f"all runs {took:.1f} s after the kill (lease TTL {ttl} s)")
        assert_exact(db, per_dag)
        assert time.monotonic() - killed_at < 120
    finally:
        for p in procs:
            p.stop()
        db.dispose()


def test_max_active_runs_holds_back_catchup(database_url, redis_url, tmp_path):
    """No worker runs anything, so runs stay active: only max_active_runs of them exist."""
    db = Database(database_url)
    upgrade(db)
    start = (datetime.now(UTC) - timedelta(days=5)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    insert_dags(db, "held", {"held": daily(start, max_active_runs=2)})
    procs = schedulers(1, tmp_path, database_url, redis_url, ttl="30")

    def dates() -> list[datetime]:
        with db.read() as session:
            return sorted(as_utc(d) for d in session.scalars(select(DagRun.logical_date)))

    try:
        deadline = time.monotonic() + 60  # the scheduler's start: long on a loaded machine
        while len(dates()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # a few scheduler loops (0.5 s each) in which a third run would appear
        assert dates() == [start, start + timedelta(days=1)], "oldest first, two at most"
    finally:
        procs[0].stop()
        db.dispose()
