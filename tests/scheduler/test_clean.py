"""`pinflow db clean` (`scheduler.clean`): old finished runs go with their tasks, tries and
logs; what is still needed stays, whatever its age. Both backends."""

from __future__ import annotations

import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from dagstore.core.db import Database
from dagstore.core.errors import BadRequest, NotFound
from scheduler.clean import clean_history
from scheduler.models import Backfill, DagRun, TaskInstance, TaskTry
from tests.support.history import HistorySpec, load_history
from tests.support.seed import daily, held_backfill, insert_dags, running_run
from tests.support.server import PINFLOW, pinflow_env

OLD = datetime.now(UTC) - timedelta(days=200)
START = datetime(2026, 1, 1, tzinfo=UTC)


def _age(db: Database, run_pks: list[int], state: str | None = None) -> None:
    """Make runs look like they ended (in `state`, if given) 200 days ago."""
    values: dict = {"ended_at": OLD, "created_at": OLD}
    if state:
        values["state"] = state
    with db.write() as session:
        session.execute(update(DagRun).where(DagRun.id.in_(run_pks)).values(**values))


def _runs_of(db: Database, dag_id: str) -> list[int]:
    with db.read() as session:
        return list(session.scalars(select(DagRun.id).where(DagRun.dag_id == dag_id)))


def _counts(db: Database) -> dict[str, int]:
    with db.read() as session:
        return {
            "runs": session.scalar(select(func.count()).select_from(DagRun)) or 0,
            "tis": session.scalar(select(func.count()).select_from(TaskInstance)) or 0,
            "tries": session.scalar(select(func.count()).select_from(TaskTry)) or 0,
            "orphan_tis": session.scalar(
                select(func.count()).where(~TaskInstance.run_pk.in_(select(DagRun.id)))
            )
            or 0,
            "orphan_tries": session.scalar(
                select(func.count()).where(~TaskTry.ti_id.in_(select(TaskInstance.id)))
            )
            or 0,
        }


@pytest.fixture
def history(db: Database) -> dict[str, object]:
    """Old history of d0, d1 and bf2 (every run ended 100-160 days ago), a backfill of bf in
    progress whose first run ended long ago, a finished backfill of bf2, an old running run."""
    insert_dags(db, "r", {"d0": daily(START), "d1": daily(START)})
    in_progress = held_backfill(db, "bf", days=3, max_active_runs=1)
    _age(db, in_progress.runs[:1], "success")
    finished = held_backfill(db, "bf2", days=2, max_active_runs=1)
    _age(db, finished.runs, "failed")
    with db.write() as session:
        session.execute(update(Backfill).where(Backfill.id == finished.id).values(created_at=OLD))
    loaded = load_history(
        db, ["d0", "d1", "bf2"], HistorySpec(task_instances=1500, days=60, newest_days_ago=100)
    )
    running = running_run(db, {"a": [], "b": ["a"]})
    with db.write() as session:
        session.execute(update(DagRun).where(DagRun.id == running).values(created_at=OLD))
    cleared = _runs_of(db, "d0")[0]  # an old run cleared back to queued: active again
    with db.write() as session:
        session.execute(update(DagRun).where(DagRun.id == cleared).values(state="queued"))
    return {"loaded": loaded, "in_progress": in_progress, "finished": finished,
            "running": running, "cleared": cleared}  # fmt: skip


def test_clean_deletes_old_history_and_keeps_what_is_needed(db: Database, history) -> None:
    before = _counts(db)
    dry = clean_history(db, timedelta(days=90), dry_run=True)
    assert _counts(db) == before, "a dry run deleted something"
    # 300 loaded runs + bf2's 2: all old and finished, but each DAG's newest stays, and the
    # cleared one is active again.
    assert dry.runs == 300 + 2 - 3 - 1
    assert dry.backfills == 1

    done = clean_history(db, timedelta(days=90), batch=37)  # batches that do not divide it
    assert (done.runs, done.task_instances, done.tries, done.backfills) == (
        dry.runs, dry.task_instances, dry.tries, dry.backfills,
    )  # fmt: skip
    assert done.batches == -(-done.runs // 37) and not done.more
    after = _counts(db)
    assert after["runs"] == before["runs"] - done.runs
    assert after["tis"] == before["tis"] - done.task_instances
    assert after["tries"] == before["tries"] - done.tries
    assert after["orphan_tis"] == after["orphan_tries"] == 0
    assert len(_runs_of(db, "d1")) == 1  # its newest
    assert sorted(_runs_of(db, "d0")) == sorted([history["cleared"], max(_runs_of(db, "d0"))])
    assert set(history["in_progress"].runs) <= set(_runs_of(db, "bf"))  # a backfill in progress
    assert not set(history["finished"].runs) & set(_runs_of(db, "bf2"))
    assert history["running"] in _runs_of(db, "seeded")
    with db.read() as session:
        backfills = set(session.scalars(select(Backfill.id)))
    assert history["in_progress"].id in backfills and history["finished"].id not in backfills

    again = clean_history(db, timedelta(days=90))
    assert (again.runs, again.batches) == (0, 0)


def test_clean_by_dag_and_limits(db: Database, history) -> None:
    only = clean_history(db, timedelta(days=90), dag_id="d1")
    assert only.runs == 100 - 1
    assert len(_runs_of(db, "d1")) == 1 and len(_runs_of(db, "d0")) == 100
    # Younger than everything: nothing goes.
    assert clean_history(db, timedelta(days=365)).runs == 0
    # A pass stopped after some batches says there is more; the next goes on.
    part = clean_history(db, timedelta(days=90), batch=10, max_batches=2)
    assert (part.runs, part.more) == (20, True)
    with pytest.raises(NotFound):
        clean_history(db, timedelta(days=90), dag_id="no_such_dag")
    with pytest.raises(BadRequest):
        clean_history(db, timedelta(0))


def test_clean_never_deletes_a_run_cleared_meanwhile(db: Database, history) -> None:
    """A clear that makes an old run active while a clean runs: the clean's conditions are
    checked on the row as it is when locked, so the run stays (PostgreSQL: SKIP LOCKED leaves
    a run whose lock the clear holds; SQLite: one writer at a time)."""
    victim = min(_runs_of(db, "d1"))
    holding, release = threading.Event(), threading.Event()

    def clear() -> None:
        with db.write() as session:
            session.execute(select(DagRun.id).where(DagRun.id == victim).with_for_update()).all()
            session.execute(update(DagRun).where(DagRun.id == victim).values(state="queued"))
            holding.set()
            release.wait(30)

    clearing = threading.Thread(target=clear)
    clearing.start()
    assert holding.wait(30)
    if db.is_sqlite:
        release.set()  # SQLite: the clean waits for the clear's transaction, then sees it
    done = clean_history(db, timedelta(days=90), dag_id="d1")
    release.set()
    clearing.join()
    assert victim in _runs_of(db, "d1")
    assert done.runs == 100 - 2
    assert clean_history(db, timedelta(days=90), dag_id="d1").runs == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--older-than", "90"], "is not an age"),
        (["--older-than", "90x"], "is not an age"),
        (["--older-than", "-5d"], "is not an age"),
        (["--older-than", ""], "is not an age"),
        (["--older-than", "0d"], "must be more than 0"),
        (["--older-than", "99999999d"], "more than 100 years"),
        (["--older-than", "90d", "--batch", "0"], "--batch"),
        ([], "--older-than"),
    ],
)
def test_db_clean_bad_input(tmp_path: Path, args: list[str], says: str) -> None:
    env = pinflow_env(tmp_path, f"sqlite:///{tmp_path}/p.db")
    done = subprocess.run(
        [PINFLOW, "db", "clean", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done
    assert says in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "p.db").exists() or done.stdout == ""


def test_db_clean_command(db: Database, history, tmp_path: Path) -> None:
    env = pinflow_env(tmp_path, db.url)

    def clean(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PINFLOW, "db", "clean", *args], env=env, capture_output=True, text=True, timeout=120
        )

    nowhere = pinflow_env(tmp_path, f"sqlite:///{tmp_path}/none.db")
    missing = subprocess.run([PINFLOW, "db", "clean", "--older-than", "90d"], env=nowhere,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 4 and "no pinflow database" in missing.stderr
    assert not (tmp_path / "none.db").exists()
    unknown = clean("--older-than", "90d", "--dag", "nope")
    assert unknown.returncode == 4 and "'nope' does not exist" in unknown.stderr
    dry = clean("--older-than", "90d", "--dry-run", "--dag", "d0")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would delete 98 runs, 490 task instances")
    assert len(_runs_of(db, "d0")) == 100
    real = clean("--older-than", "2160h", "--dag", "d0")
    assert real.returncode == 0, real.stderr
    assert real.stdout.startswith("deleted 98 runs, 490 task instances")
    assert len(_runs_of(db, "d0")) == 2
