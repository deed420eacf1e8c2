"""Scheduling DAGs in batches (issue 17): what one transaction for many DAGs could break.

A batch must keep every property of one DAG per transaction: a DAG that fails is backed off
alone, two schedulers never create one run twice (leases, then the DAG-row lock and the unique
key), max_active_runs holds, a dead scheduler's leases expire, and a new run's first tasks are
exactly those `schedule_ready` would pick.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from dagstore.core.db import Database, as_utc, db_time
from dagstore.core.models import Dag, Repo
from scheduler import batch
from scheduler.backfill import create_backfill
from scheduler.batch import schedule_batch
from scheduler.lease import Lease, lease_due_dags
from scheduler.loop import Scheduler, SchedulerConfig
from scheduler.metrics import LEASE_TAKEOVERS
from scheduler.models import DagRun, TaskInstance
from scheduler.runs import create_run
from scheduler.taskstate import schedule_ready
from tests.support.race import race
from tests.support.seed import daily, insert_dags

MIDNIGHT = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def scheduler(db: Database, name: str = "t") -> Scheduler:
    return Scheduler(db, None, SchedulerConfig(name=name))


def runs_per_dag(db: Database) -> dict[str, int]:
    with db.read() as session:
        rows = session.execute(select(DagRun.dag_id, func.count()).group_by(DagRun.dag_id))
        return dict(rows.all())


def lease_of(db: Database, dag_id: str) -> tuple[str | None, datetime | None]:
    with db.read() as session:
        holder, until = session.execute(
            select(Dag.lease_holder, Dag.lease_until).where(Dag.dag_id == dag_id)
        ).one()
    return holder, as_utc(until)


def lease(db: Database, holder: str, limit: int = 100, ttl: float = 30) -> list[Lease]:
    with db.write() as session:
        return lease_due_dags(session, holder, db_time(session), ttl, limit)


def no_catchup(days_behind: int = 3) -> dict:
    return {**daily(MIDNIGHT - timedelta(days=days_behind)), "catchup": False}


def test_a_dag_that_raises_in_a_batch_backs_off_alone(db: Database):
    """The broken DAG's plan raises in Python: it is left out, the batch goes on."""
    insert_dags(db, "fine", {f"fine{i}": no_catchup() for i in range(5)})
    insert_dags(db, "broken", {"broken": {**no_catchup(), "start_date": "not a date"}})
    leases = lease(db, "t")
    assert len(leases) == 6, "one batch holds them all"
    assert scheduler(db).schedule_leases(leases) == 5
    assert runs_per_dag(db) == {f"fine{i}": 1 for i in range(5)}
    holder, until = lease_of(db, "broken")
    assert holder is None and until is not None and until > datetime.now(UTC), "not backed off"
    assert {lease_of(db, f"fine{i}") for i in range(5)} == {(None, None)}, "not released"


def test_a_dag_the_database_refuses_rolls_back_only_itself(db: Database, caplog):
    """Two tasks with one id: the INSERT of the batch fails, so the batch is rolled back and
    its DAGs scheduled one by one; only the refused DAG is backed off."""
    twice = [{"task_id": "same", "upstream": []}, {"task_id": "same", "upstream": []}]
    insert_dags(db, "fine", {f"fine{i}": no_catchup() for i in range(4)})
    insert_dags(db, "refused", {"refused": {**no_catchup(), "tasks": twice}})
    with caplog.at_level(logging.WARNING, "pinflow.scheduler"):
        assert scheduler(db).schedule_dags() == 4
    assert "scheduling them one by one" in caplog.text
    assert runs_per_dag(db) == {f"fine{i}": 1 for i in range(4)}
    holder, until = lease_of(db, "refused")
    assert holder is None and until is not None and until > datetime.now(UTC), "not backed off"
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(TaskInstance)) == 4


def test_two_schedulers_leasing_at_once_take_disjoint_batches(db: Database):
    """The first lease is not committed yet when the second scheduler leases: on PostgreSQL
    the second skips the locked candidates at once (it must neither wait nor take them)."""
    insert_dags(db, "many", {f"d{i:02}": no_catchup() for i in range(10)})
    taken: dict[str, list[Lease]] = {}
    first_seen: list[int] = []  # the first's leases as the second saw them once done

    def first(session):
        taken["a"] = lease_due_dags(session, "a", db_time(session), 30, 6)

    def second(session):
        taken["b"] = lease_due_dags(session, "b", db_time(session), 30, 6)
        with db.read() as other:
            first_seen.append(other.scalar(select(func.count()).where(Dag.lease_holder == "a")))

    race(db, first, second)
    a, b = {x.dag_pk for x in taken["a"]}, {x.dag_pk for x in taken["b"]}
    assert len(a) == 6 and len(b) == 4 and not a & b
    # PostgreSQL: done before the first committed (no wait); SQLite: after (its one writer)
    assert first_seen == [6 if db.is_sqlite else 0]
    race(
        db,
        lambda session: schedule_batch(session, taken["a"], db_time(session), "a"),
        lambda session: schedule_batch(session, taken["b"], db_time(session), "b"),
    )
    assert runs_per_dag(db) == {f"d{i:02}": 1 for i in range(10)}


@pytest.mark.parametrize("backfill_first", [True, False])
def test_a_batch_and_a_backfill_of_the_same_tick_create_one_run(db: Database, backfill_first):
    """Both take the DAG row's lock before they look at the tick, so whichever comes second
    sees the other's run, although the first has not committed when the second starts."""
    insert_dags(db, "racing", {"racing": no_catchup(), "other": no_catchup()})
    leases = lease(db, "s")
    with db.read() as session:
        structure, sha = session.execute(
            select(Dag.structure, Dag.current_sha).where(Dag.dag_id == "racing")
        ).one()

    def backfill(session):
        return create_backfill(session, "racing", sha, "dags/d.py", structure,
                               MIDNIGHT, MIDNIGHT, None, "test")  # fmt: skip

    def schedule(session):
        return schedule_batch(session, leases, db_time(session), "s")

    race(db, *((backfill, schedule) if backfill_first else (schedule, backfill)))
    with db.read() as session:
        rows = session.execute(select(DagRun.dag_id, DagRun.logical_date, DagRun.run_type)).all()
    today = [(d, t) for d, date, t in rows if d == "racing" and as_utc(date) == MIDNIGHT]
    assert len(today) == 1, rows
    assert today[0][1] == ("backfill" if backfill_first else "scheduled")
    assert runs_per_dag(db)["other"] == 1


def test_two_scheduler_threads_create_every_due_run_once(db: Database, caplog):
    """Two schedulers batch the same 150 catchup DAGs at once until nothing is due; each
    takes its first batch before either goes on, so both are at work together."""
    days = 3
    start = MIDNIGHT - timedelta(days=days)
    insert_dags(db, "many", {f"d{i:03}": daily(start) for i in range(150)})
    schedulers = [Scheduler(db, None, SchedulerConfig(name=f"s{i}", batch=20)) for i in range(2)]
    both_started = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def loop(sched: Scheduler) -> None:
        try:
            created = sched.schedule_dags()
            both_started.wait()
            deadline = time.monotonic() + 60
            while created and time.monotonic() < deadline:
                created = sched.schedule_dags()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    with caplog.at_level(logging.WARNING, "pinflow.scheduler"):
        threads = [threading.Thread(target=loop, args=(s,)) for s in schedulers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
    assert not errors
    assert caplog.text == "", "a lease was lost or a batch failed"
    with db.read() as session:
        keys = session.execute(select(DagRun.dag_id, DagRun.logical_date)).all()
        creators = dict(
            session.execute(
                select(DagRun.created_by, func.count()).group_by(DagRun.created_by)
            ).all()
        )
    assert len(keys) == len(set(keys)) == 150 * (days + 1)
    assert set(creators) == {"scheduler:s0", "scheduler:s1"}
    assert min(creators.values()) >= 20 * (days + 1), "a first batch is missing"


def test_max_active_runs_holds_within_a_batch(db: Database):
    insert_dags(db, "held", {f"h{i}": daily(MIDNIGHT - timedelta(days=5), 2) for i in range(3)})
    with db.write() as session:  # h0 has an active run already: room for one more
        repo_id = session.scalar(select(Repo.id))
        create_run(session, dag_id="h0", repo_id=repo_id, sha="a" * 40, fileloc="dags/d.py",
                   structure={"tasks": []}, logical_date=MIDNIGHT + timedelta(days=9),
                   run_type="manual", created_by="test")  # fmt: skip
        session.execute(update(DagRun).values(state="running"))
    sched = scheduler(db)
    assert sched.schedule_dags() == 1 + 2 + 2
    assert sched.schedule_dags() == 0, "blocked DAGs are backed off, not leased again"
    assert runs_per_dag(db) == {"h0": 2, "h1": 2, "h2": 2}
    for dag_id in ("h0", "h1", "h2"):
        holder, until = lease_of(db, dag_id)
        assert holder is None and until is not None and until > datetime.now(UTC)


def test_a_batch_spreads_a_long_catchup_over_ticks(db: Database, monkeypatch):
    monkeypatch.setattr(batch, "MAX_RUNS_PER_BATCH", 5)
    insert_dags(db, "behind", {f"b{i}": daily(MIDNIGHT - timedelta(days=3)) for i in range(3)})
    sched = scheduler(db)
    assert sched.schedule_dags() == 5, "the budget bounds one transaction"
    assert sum(sched.schedule_dags() for _ in range(3)) == 3 * 4 - 5
    assert runs_per_dag(db) == {"b0": 4, "b1": 4, "b2": 4}


def test_a_dead_schedulers_batch_lease_expires_and_stays_fenced(db: Database):
    insert_dags(db, "orphans", {f"o{i}": no_catchup() for i in range(5)})
    dead = lease(db, "dead", ttl=0.5)
    assert len(dead) == 5
    alive = scheduler(db, "alive")
    assert alive.schedule_dags() == 0, "leased DAGs were taken before the lease expired"
    time.sleep(0.7)
    takeovers = LEASE_TAKEOVERS._value.get()  # noqa: SLF001 - the counter's own value
    assert alive.schedule_dags() == 5
    assert LEASE_TAKEOVERS._value.get() - takeovers == 5  # noqa: SLF001 - counted as such
    assert scheduler(db, "dead").schedule_leases(dead) == 0, "the stale batch wrote"
    assert runs_per_dag(db) == {f"o{i}": 1 for i in range(5)}
    with db.read() as session:
        assert set(session.scalars(select(DagRun.created_by))) == {"scheduler:alive"}
        assert set(session.scalars(select(Dag.lease_holder))) == {None}
    again = LEASE_TAKEOVERS._value.get()  # noqa: SLF001
    insert_dags(db, "fresh", {"f0": no_catchup()})
    assert alive.schedule_dags() == 1
    assert LEASE_TAKEOVERS._value.get() == again, "a released lease is no takeover"  # noqa: SLF001


def test_a_batch_schedules_a_new_run_as_schedule_ready_would(db: Database):
    """Roots (no upstream in the run) are queued at once, every other task waits; a run with
    no task at all settles as it is created."""
    tasks = [
        {"task_id": "a", "upstream": []},
        {"task_id": "b", "upstream": ["a"]},
        {"task_id": "c", "upstream": ["a", "b"]},
        {"task_id": "d", "upstream": ["gone"]},  # an upstream the run does not have
    ]
    insert_dags(db, "shapes", {"shaped": {**no_catchup(), "tasks": tasks},
                               "empty": {**no_catchup(), "tasks": []}})  # fmt: skip
    leases = lease(db, "t")
    with db.write() as session:
        outcome = schedule_batch(session, leases, db_time(session), "t")
    assert outcome.created == 2
    assert sorted(p.task_id for p in outcome.payloads) == ["a", "d"]
    assert {p.try_number for p in outcome.payloads} == {1}
    with db.write() as session:
        repo_id = session.scalar(select(Repo.id))
        now = db_time(session)
        single = create_run(session, dag_id="single", repo_id=repo_id, sha="a" * 40,
                            fileloc="f.py", structure={"tasks": tasks}, logical_date=now,
                            run_type="manual", created_by="test")  # fmt: skip
        schedule_ready(session, single, now)
        rows = session.execute(
            select(DagRun.dag_id, DagRun.state, TaskInstance.task_id, TaskInstance.state).outerjoin(
                TaskInstance, TaskInstance.run_pk == DagRun.id
            )
        ).all()
    states: dict[str, dict] = {}
    for dag_id, run_state, task_id, task_state in rows:
        states.setdefault(dag_id, {"run": run_state})[task_id] = task_state
    expected = {"a": "scheduled", "b": "none", "c": "none", "d": "scheduled"}
    assert states["single"] == {"run": "queued", **expected}
    assert states["shaped"] == {"run": "queued", **expected, "a": "queued", "d": "queued"}
    assert states["empty"] == {"run": "success", None: None}
