"""Which DAGs a scheduler leases and schedules (issue 12, findings 2 and 7)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from dagstore.core.db import Database, as_utc, db_time
from dagstore.core.models import Dag
from scheduler.lease import lease_due_dags
from scheduler.loop import Scheduler, SchedulerConfig
from scheduler.models import DagRun
from tests.support.seed import daily, every, insert_dags


def scheduler(db: Database) -> Scheduler:
    return Scheduler(db, None, SchedulerConfig(name="t"))


def runs_of(db: Database) -> dict[str, int]:
    with db.read() as session:
        rows = session.execute(select(DagRun.dag_id, func.count()).group_by(DagRun.dag_id))
        return {dag_id: count for dag_id, count in rows}


def once(start: datetime) -> dict:
    return {**daily(start), "schedule": "@once"}


def test_finished_schedules_leave_the_candidates_for_good(db: Database):
    """Ten @once DAGs that have run (a full batch) must not keep a ticking DAG waiting."""
    now = datetime.now(UTC).replace(microsecond=0)
    insert_dags(db, "onces", {f"once{i}": once(now - timedelta(hours=1)) for i in range(10)})
    insert_dags(db, "ticks", {"ticking": every(1, now - timedelta(seconds=2))})
    sched = scheduler(db)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        sched.tick()
        time.sleep(0.2)
    runs = runs_of(db)
    assert {runs.get(f"once{i}") for i in range(10)} == {1}
    assert runs.get("ticking", 0) >= 1, "the ticking DAG was never leased"
    with db.read() as session:
        ended = session.execute(select(Dag.dag_id, Dag.schedule_ended, Dag.next_due_at)).all()
    for dag_id, is_ended, next_due in ended:
        assert is_ended == dag_id.startswith("once")
        assert (next_due is None) == dag_id.startswith("once")


def test_past_end_date_the_schedule_ends(db: Database):
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start -= timedelta(days=3)
    structure = {**daily(start), "end_date": (start + timedelta(days=1)).isoformat()}
    insert_dags(db, "ending", {"ending": structure})
    sched = scheduler(db)
    for _ in range(3):
        sched.tick()
    assert runs_of(db) == {"ending": 2}  # start and start + 1 day, both within end_date
    with db.read() as session:
        assert session.scalar(select(Dag.schedule_ended)) is True


def test_a_dag_paused_after_its_lease_gets_no_run(db: Database):
    start = datetime.now(UTC) - timedelta(days=1)
    insert_dags(db, "paused", {"paused": daily(start)})
    sched = scheduler(db)
    with db.write() as session:
        (lease,) = lease_due_dags(session, "t", db_time(session), 30)
    with db.write() as session:  # paused between the lease and the scheduling
        session.execute(update(Dag).values(is_paused=True))
    assert sched.schedule_one(lease) == 0
    assert runs_of(db) == {}
    with db.read() as session:
        assert session.scalar(select(Dag.lease_holder)) is None, "the lease was not given up"


def test_one_dag_that_fails_to_schedule_does_not_stop_the_others(db: Database):
    start = datetime.now(UTC) - timedelta(days=1)
    insert_dags(db, "broken", {"broken": {**daily(start), "start_date": "not a date"}})
    insert_dags(db, "fine", {"fine": daily(start)})
    sched = scheduler(db)
    sched.tick()
    assert runs_of(db) == {"fine": 1}
    with db.read() as session:
        holder, until = session.execute(
            select(Dag.lease_holder, Dag.lease_until).where(Dag.dag_id == "broken")
        ).one()
    assert holder is None and as_utc(until) > datetime.now(UTC), "not backed off"
